package audit

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// VerifyOptions says what Verify trusts and checks.
type VerifyOptions struct {
	// PublicKeys are the keys digests may be signed by, by Fingerprint.
	// Nil trusts the public keys exported in the directory, which proves
	// the trail consistent but not who signed it: pin the key instead.
	PublicKeys map[string]*ecdsa.PublicKey
	// From and To, if set, limit which files' records are read to those
	// with records in [From, To]. Every digest is checked regardless:
	// they are small, and they carry each skipped file's chain ends.
	From, To time.Time
}

// Summary is what a trail that verifies holds.
type Summary struct {
	TrailID                          string
	Digests, Files                   int
	Records                          uint64 // records read and checked
	FirstSequence, LastSequence      uint64
	OldestEventTime, NewestEventTime string
	// Unsealed counts records in files no digest seals yet: those of a
	// running hsmkms (or of one that crashed and has not started again).
	Unsealed uint64
	// Expired are digests retention deleted, as the trail announced.
	Expired []string
	// Keys are the fingerprints of the keys the digests are signed by;
	// Pinned says they were given, not read from the directory.
	Keys   []string
	Pinned bool
}

// Verify checks the trail in dir: every digest's signature and its link to
// the previous digest, every sealed file's SHA-256 against its digest,
// every record's place in the hash chain, within and across files. It
// returns the first problem in the trail's order as a *Problem naming the
// file and record.
func Verify(dir string, opt VerifyOptions) (*Summary, error) {
	l, err := list(dir)
	if err != nil {
		return nil, err
	}
	sum := &Summary{Pinned: opt.PublicKeys != nil}
	keys := opt.PublicKeys
	if keys == nil {
		if keys, err = publicKeys(dir); err != nil {
			return nil, err
		}
	}
	v := &verifier{dir: dir, l: l, opt: opt, sum: sum, keys: keys, usedKeys: map[string]bool{}}
	if err := v.run(); err != nil {
		return nil, err
	}
	for k := range v.usedKeys {
		sum.Keys = append(sum.Keys, k)
	}
	sort.Strings(sum.Keys)
	return sum, nil
}

type verifier struct {
	dir      string
	l        *listing
	opt      VerifyOptions
	sum      *Summary
	keys     map[string]*ecdsa.PublicKey
	usedKeys map[string]bool
	expired  map[string]bool // announced by ExpireAuditFiles records; nil until read
	// pruned: the first digest's predecessor was deleted by retention,
	// so the chain may start at any record.
	pruned bool

	// The chain so far: the last record checked (or sealed).
	head     bool
	headSeq  uint64
	headHash string
	headFile string
}

func (v *verifier) run() error {
	sealed := map[string]bool{}
	var prevName string
	var prevSeq uint64
	var prevData, prevSig []byte
	for i, name := range v.l.digests {
		d, data, err := readDigest(v.dir, name)
		if err != nil {
			return &Problem{File: name, Reason: err.Error()}
		}
		sig, err := os.ReadFile(filepath.Join(v.dir, name+".sig"))
		if err != nil {
			return &Problem{File: name, Reason: "its signature file is missing"}
		}
		key := v.keys[d.DigestPublicKeyFingerprint]
		if key == nil {
			return &Problem{File: name, Reason: fmt.Sprintf("signed by key %s, which is not a trusted key", truncate(d.DigestPublicKeyFingerprint, 64))}
		}
		digest := sha256.Sum256(data)
		if !ecdsa.VerifyASN1(key, digest[:], sig) {
			return &Problem{File: name, Reason: "the signature does not verify: the digest was changed or not signed by the audit key"}
		}
		v.usedKeys[d.DigestPublicKeyFingerprint] = true
		switch {
		case v.sum.TrailID == "":
			v.sum.TrailID = d.TrailID
		case d.TrailID != v.sum.TrailID:
			return &Problem{File: name, Reason: fmt.Sprintf("belongs to trail %s, not %s", truncate(d.TrailID, 40), v.sum.TrailID)}
		}
		if i == 0 {
			if d.PreviousDigestFile != "" {
				announced, err := v.announced(d.PreviousDigestFile)
				if err != nil {
					return err
				}
				if !announced {
					return &Problem{File: truncate(d.PreviousDigestFile, 80), Reason: fmt.Sprintf("missing: %s follows it, and no record says retention deleted it", name)}
				}
				v.pruned = true
			}
		} else {
			ps := sha256.Sum256(prevData)
			switch {
			case d.PreviousDigestFile != prevName || d.DigestSequence != prevSeq+1:
				return &Problem{File: name, Reason: fmt.Sprintf("does not follow %s: a digest is missing", prevName)}
			case d.PreviousDigestHashValue != hex.EncodeToString(ps[:]):
				return &Problem{File: name, Reason: fmt.Sprintf("the hash it holds of %s does not match: %s was changed", prevName, prevName)}
			case d.PreviousDigestSignature != hex.EncodeToString(prevSig):
				return &Problem{File: name, Reason: fmt.Sprintf("the signature it holds of %s does not match %s.sig", prevName, prevName)}
			}
		}
		for _, f := range d.LogFiles {
			if err := v.sealedFile(name, f); err != nil {
				return err
			}
			sealed[f.File] = true
		}
		prevName, prevSeq, prevData, prevSig = name, d.DigestSequence, data, sig
		v.sum.Digests++
	}
	// Files no digest seals must come after every sealed file: the open
	// file of a running hsmkms, or what a crash left for the next start.
	lastSealed := ""
	for _, n := range v.l.trails {
		if sealed[n] {
			lastSealed = n
		}
	}
	for _, n := range v.l.trails {
		if sealed[n] {
			continue
		}
		if n < lastSealed {
			return &Problem{File: n, Reason: "is not sealed by any digest, yet later files are: its digest is missing"}
		}
		s, err := scanFile(v.dir, n, nil)
		if err != nil {
			return err
		}
		if s.padding > 0 && n != v.l.trails[len(v.l.trails)-1] {
			return &Problem{File: n, Reason: "has space written ahead of its records, yet a later file exists: it was not closed"}
		}
		if err := v.records(n, s); err != nil {
			return err
		}
		if s.entry.TornBytes > 0 {
			return &Problem{File: n, Sequence: s.entry.LastSequence + 1,
				Reason: fmt.Sprintf("ends inside a record (%d bytes after record %d): it was truncated, or is being written now", s.entry.TornBytes, s.entry.LastSequence)}
		}
		v.sum.Unsealed += s.entry.Records
		v.sum.Files++
	}
	if v.sum.TrailID == "" && len(v.l.trails) > 0 {
		id, err := trailIDOf(v.dir, v.l.trails[0])
		if err != nil {
			return &Problem{File: v.l.trails[0], Line: 1, Reason: "does not begin with the trail's start record"}
		}
		v.sum.TrailID = id
	}
	return nil
}

// sealedFile checks one file a digest seals.
func (v *verifier) sealedFile(digest string, f LogFile) error {
	if _, err := os.Stat(filepath.Join(v.dir, f.File)); errors.Is(err, os.ErrNotExist) {
		announced, aerr := v.announced(f.File)
		if aerr != nil {
			return aerr
		}
		if announced {
			v.skip(f)
			return nil
		}
		return &Problem{File: f.File, Reason: fmt.Sprintf("missing: %s seals it (records %d to %d)", digest, f.FirstSequence, f.LastSequence)}
	}
	if !v.inRange(f) {
		if err := v.link(f.File, f.FirstSequence, f.PreviousRecordHash, f.Records); err != nil {
			return err
		}
		v.skip(f)
		return nil
	}
	s, err := scanFile(v.dir, f.File, nil)
	if err != nil {
		return err
	}
	if s.entry.HashValue != f.HashValue {
		reason := fmt.Sprintf("its SHA-256 does not match %s", digest)
		switch {
		case s.entry.Size < f.Size:
			reason += fmt.Sprintf(": it was truncated (%d bytes, %d sealed; it ends at record %d, %d were sealed)", s.entry.Size, f.Size, s.entry.LastSequence, f.LastSequence)
		case s.entry.Records != f.Records:
			reason += fmt.Sprintf(": it holds %d records, %d were sealed", s.entry.Records, f.Records)
		default:
			reason += ": it was changed"
		}
		if s.problem != nil {
			return &Problem{File: s.problem.File, Line: s.problem.Line, Sequence: s.problem.Sequence, Reason: s.problem.Reason + "; and " + reason}
		}
		return &Problem{File: f.File, Reason: reason}
	}
	if f.TornBytes != s.entry.TornBytes {
		return &Problem{File: f.File, Reason: "its torn tail does not match its digest"}
	}
	if s.padding > 0 {
		return &Problem{File: f.File, Reason: fmt.Sprintf("%d bytes follow what %s sealed", s.padding, digest)}
	}
	if err := v.records(f.File, s); err != nil {
		return err
	}
	v.sum.Files++
	return nil
}

// records checks a scanned file's records and their link to the chain.
func (v *verifier) records(name string, s *scanned) error {
	if s.problem != nil {
		return s.problem
	}
	if s.entry.Records == 0 {
		return nil
	}
	if err := v.link(name, s.entry.FirstSequence, s.entry.PreviousRecordHash, s.entry.Records); err != nil {
		return err
	}
	v.headSeq, v.headHash, v.headFile, v.head = s.entry.LastSequence, s.entry.LastRecordHash, name, true
	v.sum.Records += s.entry.Records
	if v.sum.FirstSequence == 0 {
		v.sum.FirstSequence = s.entry.FirstSequence
	}
	v.sum.LastSequence = s.entry.LastSequence
	if v.sum.OldestEventTime == "" || s.entry.OldestEventTime < v.sum.OldestEventTime {
		v.sum.OldestEventTime = s.entry.OldestEventTime
	}
	if s.entry.NewestEventTime > v.sum.NewestEventTime {
		v.sum.NewestEventTime = s.entry.NewestEventTime
	}
	return nil
}

// link checks that a file's first record follows the chain's head; the
// first file of a trail that was never pruned starts the chain.
func (v *verifier) link(name string, first uint64, prevHash string, records uint64) error {
	if records == 0 {
		return nil
	}
	if !v.head {
		switch {
		case v.pruned:
		case first != 1:
			return &Problem{File: name, Line: 1, Sequence: first, Reason: fmt.Sprintf("the trail starts at record %d: records 1 to %d are missing", first, first-1)}
		case prevHash != hex.EncodeToString(genesis[:]):
			return &Problem{File: name, Line: 1, Sequence: 1, Reason: "the trail's first record does not start the chain"}
		}
		return nil
	}
	switch {
	case first != v.headSeq+1:
		return &Problem{File: name, Line: 1, Sequence: first,
			Reason: fmt.Sprintf("follows record %d of %s: records %d to %d are missing", v.headSeq, v.headFile, v.headSeq+1, first-1)}
	case prevHash != v.headHash:
		return &Problem{File: name, Line: 1, Sequence: first,
			Reason: fmt.Sprintf("previousHash does not match record %d of %s: a record was changed, removed or inserted", v.headSeq, v.headFile)}
	}
	return nil
}

// skip moves the chain's head over a file not read.
func (v *verifier) skip(f LogFile) {
	if f.Records == 0 {
		return
	}
	v.headSeq, v.headHash, v.headFile, v.head = f.LastSequence, f.LastRecordHash, f.File, true
}

func (v *verifier) inRange(f LogFile) bool {
	if !v.opt.From.IsZero() && f.NewestEventTime != "" && f.NewestEventTime < v.opt.From.UTC().Format(TimeLayout) {
		return false
	}
	if !v.opt.To.IsZero() && f.OldestEventTime != "" && f.OldestEventTime > v.opt.To.UTC().Format(TimeLayout) {
		return false
	}
	return true
}

// announced reports whether an ExpireAuditFiles record names the digest
// or file: retention deleted it, as the trail itself says.
func (v *verifier) announced(name string) (bool, error) {
	if v.expired == nil {
		v.expired = map[string]bool{}
		marker := []byte(`"eventName":"` + ExpiredEvent + `"`)
		for _, n := range v.l.trails {
			_, err := scanFile(v.dir, n, func(line []byte, _ record) error {
				if !bytes.Contains(line, marker) {
					return nil
				}
				var ev struct {
					EventSource         string
					ServiceEventDetails struct{ Digests, Files []string }
				}
				if json.Unmarshal(line, &ev) != nil || ev.EventSource != TrailSource {
					return nil
				}
				for _, d := range ev.ServiceEventDetails.Digests {
					v.expired[d] = true
					v.sum.Expired = append(v.sum.Expired, d)
				}
				for _, f := range ev.ServiceEventDetails.Files {
					v.expired[f] = true
				}
				return nil
			})
			if err != nil {
				return false, err
			}
		}
	}
	return v.expired[name], nil
}
