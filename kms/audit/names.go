package audit

import (
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// File names. A trail file is named by its first record's sequence
// number and the time it was opened, a digest by its own sequence number
// and the time it was written; both sort by name in the order written.
//
//	trail-00000000000000000001-20260101T120000Z.jsonl
//	digest-00000000000000000001-20260101T130000Z.json
//	digest-00000000000000000001-20260101T130000Z.json.sig   the DER signature
//	audit-public-key.pem                                     the signing key
const (
	nameTime     = "20060102T150405Z"
	PublicKeyPEM = "audit-public-key.pem"
	lockName     = ".lock"
)

var (
	trailNameRe  = regexp.MustCompile(`^trail-([0-9]{20})-([0-9]{8}T[0-9]{6}Z)\.jsonl$`)
	digestNameRe = regexp.MustCompile(`^digest-([0-9]{20})-([0-9]{8}T[0-9]{6}Z)\.json$`)
)

func trailName(first uint64, t time.Time) string {
	return fmt.Sprintf("trail-%020d-%s.jsonl", first, t.UTC().Format(nameTime))
}

func digestName(n uint64, t time.Time) string {
	return fmt.Sprintf("digest-%020d-%s.json", n, t.UTC().Format(nameTime))
}

// parseTrailName returns the first sequence number a trail file's name
// says it holds.
func parseTrailName(name string) (uint64, bool) { return parseName(trailNameRe, name) }

// parseDigestName returns a digest file's sequence number.
func parseDigestName(name string) (uint64, bool) { return parseName(digestNameRe, name) }

func parseName(re *regexp.Regexp, name string) (uint64, bool) {
	m := re.FindStringSubmatch(name)
	if m == nil {
		return 0, false
	}
	n, err := strconv.ParseUint(m[1], 10, 64)
	if err != nil || n == 0 {
		return 0, false
	}
	if _, err := time.Parse(nameTime, m[2]); err != nil {
		return 0, false
	}
	return n, true
}
