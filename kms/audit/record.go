package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"
)

// A record is one line of a trail file: an Event's JSON object with the
// chain appended as its last member,
//
//	{…,"hsmkms":{"sequence":N,"previousHash":"<64 hex digits>"}}
//
// where previousHash is the SHA-256 of the previous record's line (its
// bytes without the newline) and the first record of a trail has 64
// zeros. The chain is written in exactly this form, so a reader can take
// it from the end of the line and need not trust a JSON parser to find it.

// TimeLayout is the layout of eventTime and of every time in a digest:
// CloudTrail's.
const TimeLayout = "2006-01-02T15:04:05Z"

// FormatTime writes t as eventTime: CloudTrail's layout, UTC, seconds.
// Every record has one; the string of the current second is kept.
func FormatTime(t time.Time) string {
	sec := t.Unix()
	if c := lastTime.Load(); c != nil && c.sec == sec {
		return c.s
	}
	s := t.UTC().Format(TimeLayout)
	lastTime.Store(&formatted{sec, s})
	return s
}

type formatted struct {
	sec int64
	s   string
}

var lastTime atomic.Pointer[formatted]

// genesis is the previousHash of a trail's first record.
var genesis [32]byte

const chainPrefix = `,"hsmkms":{"sequence":`

// appendChain appends line (an Event's JSON object) with its chain
// members to dst, and returns dst and the record's hash.
func appendChain(dst, body []byte, seq uint64, prev [32]byte) ([]byte, [32]byte) {
	start := len(dst)
	dst = append(dst, body[:len(body)-1]...)
	dst = append(dst, chainPrefix...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, `,"previousHash":"`...)
	dst = hex.AppendEncode(dst, prev[:])
	dst = append(dst, `"}}`...)
	return dst, sha256.Sum256(dst[start:])
}

// record is what the trail's readers need of a line.
type record struct {
	Sequence uint64
	Previous [32]byte
	Hash     [32]byte
	Time     time.Time // eventTime
}

// errRecord describes a line that is not a record of the trail.
var errRecord = errors.New("not a trail record")

// parseRecord reads one line (without its newline). The line is
// untrusted: anything but a record exactly as the trail writes it is an
// error saying what is wrong.
func parseRecord(line []byte) (record, error) {
	var r record
	// The chain, from the end: …,"hsmkms":{"sequence":N,"previousHash":"H"}}
	const tail = len(`"}}`) + 64
	if len(line) < len(chainPrefix)+len(`,"previousHash":"`)+tail+2 || !bytes.HasSuffix(line, []byte(`"}}`)) {
		return r, fmt.Errorf("%w: no chain at its end", errRecord)
	}
	hexPrev := line[len(line)-tail : len(line)-3]
	if _, err := hex.Decode(r.Previous[:], hexPrev); err != nil || !isLowerHex(hexPrev) {
		return r, fmt.Errorf("%w: previousHash is not 64 lower-case hex digits", errRecord)
	}
	rest := line[:len(line)-tail]
	rest, ok := bytes.CutSuffix(rest, []byte(`,"previousHash":"`))
	if !ok {
		return r, fmt.Errorf("%w: no previousHash", errRecord)
	}
	i := bytes.LastIndex(rest, []byte(chainPrefix))
	if i < 0 {
		return r, fmt.Errorf("%w: no sequence", errRecord)
	}
	seq := rest[i+len(chainPrefix):]
	n, err := strconv.ParseUint(string(seq), 10, 64)
	if err != nil || n == 0 || string(seq) != strconv.FormatUint(n, 10) {
		return r, fmt.Errorf("%w: sequence is not a positive number", errRecord)
	}
	r.Sequence = n
	// The rest must be a JSON object whose last member is the chain.
	var fields struct {
		EventTime string          `json:"eventTime"`
		Chain     json.RawMessage `json:"hsmkms"`
	}
	if err := json.Unmarshal(line, &fields); err != nil {
		return r, fmt.Errorf("%w: not JSON: %v", errRecord, err)
	}
	if r.Time, err = time.Parse(TimeLayout, fields.EventTime); err != nil {
		return r, fmt.Errorf("%w: eventTime %q is not a time", errRecord, truncate(fields.EventTime, 40))
	}
	r.Hash = sha256.Sum256(line)
	return r, nil
}

func isLowerHex(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
