package audit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// listing is what a trail directory holds, each list in name order
// (which is the order written).
type listing struct {
	trails  []string
	digests []string
}

func list(dir string) (*listing, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	l := &listing{}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		if _, ok := parseTrailName(e.Name()); ok {
			l.trails = append(l.trails, e.Name())
		} else if _, ok := parseDigestName(e.Name()); ok {
			l.digests = append(l.digests, e.Name())
		}
	}
	slices.Sort(l.trails)
	slices.Sort(l.digests)
	return l, nil
}

// readDigest reads and parses a digest file, with its hash.
func readDigest(dir, name string) (*Digest, []byte, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return nil, nil, err
	}
	d, err := parseDigest(b)
	if err != nil {
		return nil, nil, err
	}
	if d.DigestFile != name {
		return nil, nil, fmt.Errorf("names itself %q", truncate(d.DigestFile, 80))
	}
	return d, b, nil
}

// recover reads the directory and brings the writer's state to the end of
// the trail: the last digest, the chain's last record, and the files the
// last run left unsealed, which it seals now. A last line the crash cut
// short is sealed as TornBytes: never acknowledged, never rewritten. It
// returns the start record, which says how the last run ended.
func (t *Trail) recover() (*Event, error) {
	dir := t.cfg.Dir
	l, err := list(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	t.last.end = t.now()
	sealedUpTo := ""
	previousRun := "none"
	if n := len(l.digests); n > 0 {
		name := l.digests[n-1]
		d, data, err := readDigest(dir, name)
		if err != nil {
			return nil, fmt.Errorf("audit: the last digest, %s, cannot be read (%v): the trail was altered; see `hsmkms audit verify`", name, err)
		}
		sig, err := os.ReadFile(filepath.Join(dir, name+".sig"))
		if errors.Is(err, os.ErrNotExist) {
			// A crash between the digest and its signature: sign it now.
			sig, err = t.sign(data)
			if err == nil {
				err = writeFileSync(dir, name+".sig", sig, 0o600)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("audit: the signature of %s: %w", name, err)
		}
		end, err := time.Parse(TimeLayout, d.DigestEndTime)
		if err != nil {
			return nil, fmt.Errorf("audit: %s: digestEndTime: %w", name, err)
		}
		sum := sha256.Sum256(data)
		t.id = d.TrailID
		t.last = lastDigest{seq: d.DigestSequence, name: name, hash: hex.EncodeToString(sum[:]), sig: hex.EncodeToString(sig), end: end}
		if d.Reason == SealStop {
			previousRun = "stopped"
		} else {
			previousRun = "crashed"
		}
		// The chain's end as last sealed: the newest digest listing a file.
		for i := n - 1; i >= 0 && sealedUpTo == ""; i-- {
			di := d
			if i != n-1 {
				if di, _, err = readDigest(dir, l.digests[i]); err != nil {
					return nil, fmt.Errorf("audit: %s cannot be read (%v): the trail was altered; see `hsmkms audit verify`", l.digests[i], err)
				}
			}
			if k := len(di.LogFiles); k > 0 {
				f := di.LogFiles[k-1]
				sealedUpTo = f.File
				if _, err := hex.Decode(t.prev[:], []byte(f.LastRecordHash)); err != nil {
					return nil, fmt.Errorf("audit: %s: lastRecordHash of %s is not a hash", l.digests[i], f.File)
				}
				t.seq = f.LastSequence
			}
		}
	}
	var unsealed []string
	for _, name := range l.trails {
		if name > sealedUpTo {
			unsealed = append(unsealed, name)
		}
	}
	details := Fields{}
	if len(unsealed) > 0 {
		previousRun = "crashed"
		var torn int64
		for _, name := range unsealed {
			s, err := scanFile(dir, name, nil)
			if err != nil {
				return nil, fmt.Errorf("audit: reading %s: %w", name, err)
			}
			if s.padding > 0 {
				// The zeros written ahead of the records were never
				// records: cut them, as closing the file would have.
				if err := truncateSync(filepath.Join(dir, name), s.entry.Size); err != nil {
					return nil, fmt.Errorf("audit: sealing %s: %w", name, err)
				}
			}
			if s.entry.Records > 0 && t.id == "" {
				if t.id, err = trailIDOf(dir, name); err != nil {
					return nil, err
				}
			}
			if s.problem != nil {
				t.log.Error("audit trail altered while hsmkms was down; sealing it as found", "problem", s.problem.Error())
				details.Add("problem", s.problem.Error())
			} else if s.entry.Records > 0 && (s.entry.FirstSequence != t.seq+1 || s.entry.PreviousRecordHash != hex.EncodeToString(t.prev[:])) {
				p := &Problem{File: name, Line: 1, Sequence: s.entry.FirstSequence,
					Reason: fmt.Sprintf("does not follow record %d: records or files are missing", t.seq)}
				t.log.Error("audit trail altered while hsmkms was down; sealing it as found", "problem", p.Error())
				details.Add("problem", p.Error())
			}
			if s.entry.Records > 0 {
				t.seq, t.prev = s.entry.LastSequence, s.last
			}
			torn += s.entry.TornBytes
			t.pending = append(t.pending, s.entry)
		}
		if torn > 0 {
			t.log.Warn("the last run ended inside a write; its unacknowledged tail is sealed as torn", "bytes", torn)
		}
		details.Add("sealedAtStart", unsealed)
		details.Add("tornBytes", torn)
	}
	if t.id == "" {
		t.id = NewID()
	}
	if len(t.pending) > 0 {
		t.seal(SealRecovery)
		if err := t.Err(); err != nil {
			return nil, err
		}
	}
	start := Fields{{"trailId", t.id}, {"previousRun", previousRun}, {"lastSequence", t.seq}}
	return t.serviceEvent("StartAuditTrail", append(start, details...)), nil
}

// trailIDOf reads the trail id from a file's first record, the start
// record of the run that wrote it.
func trailIDOf(dir, name string) (string, error) {
	var id string
	stop := errors.New("stop")
	_, err := scanFile(dir, name, func(line []byte, _ record) error {
		var ev struct {
			EventName           string
			ServiceEventDetails struct{ TrailID string }
		}
		if json.Unmarshal(line, &ev) == nil && ev.EventName == "StartAuditTrail" {
			id = ev.ServiceEventDetails.TrailID
		}
		return stop
	})
	if err != nil && !errors.Is(err, stop) {
		return "", err
	}
	if id == "" {
		return "", fmt.Errorf("audit: %s does not begin with a start record: the trail was altered; see `hsmkms audit verify`", name)
	}
	return id, nil
}

func (t *Trail) sign(data []byte) ([]byte, error) {
	sum := sha256.Sum256(data)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return t.cfg.Signer.Sign(ctx, sum[:])
}

func truncateSync(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	return f.Sync()
}
