package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// expirer deletes what retention no longer keeps, after each digest.
func (t *Trail) expirer() {
	defer t.bg.Done()
	for {
		select {
		case <-t.stop:
			return
		case <-t.expire:
		}
		if err := t.expireOld(); err != nil && !errors.Is(err, ErrClosed) {
			t.log.Error("audit retention: could not delete expired files", "error", err)
		}
	}
}

// ExpiredEvent is the name of the record that announces files deleted by
// retention; verify accepts a missing digest only if one names it.
const ExpiredEvent = "ExpireAuditFiles"

// expireOld deletes, oldest first, the digests whose end is older than
// the retention and the files they seal, never the newest digest (the
// next one links to it). They are announced in the trail, durably,
// before anything is deleted.
func (t *Trail) expireOld() error {
	dir := t.cfg.Dir
	l, err := list(dir)
	if err != nil || len(l.digests) < 2 {
		return err
	}
	cutoff := t.now().Add(-t.cfg.Retention)
	var digests, files []string
	for _, name := range l.digests[:len(l.digests)-1] {
		d, _, err := readDigest(dir, name)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err) // never delete what cannot be read
		}
		end, err := time.Parse(TimeLayout, d.DigestEndTime)
		if err != nil || !end.Before(cutoff) {
			break
		}
		digests = append(digests, name)
		for _, f := range d.LogFiles {
			files = append(files, f.File)
		}
	}
	if len(digests) == 0 {
		return nil
	}
	ev := t.serviceEvent(ExpiredEvent, Fields{{"trailId", t.id}, {"retentionDays", int(t.cfg.Retention / (24 * time.Hour))},
		{"digests", digests}, {"files", files}})
	if _, err := t.Append(context.Background(), ev); err != nil {
		return err
	}
	for _, f := range files {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	for _, d := range digests {
		for _, n := range []string{d + ".sig", d} {
			if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	t.log.Info("audit retention: deleted expired files", "digests", len(digests), "files", len(files))
	return syncDir(dir)
}

// Records calls fn with every record of the trail in dir whose sequence
// number is above after, in order: each line without its newline. A last
// line a crash cut short is not a record. It reads only the files that
// can hold such records.
func Records(dir string, after uint64, fn func(seq uint64, line []byte) error) error {
	l, err := list(dir)
	if err != nil {
		return err
	}
	for i, name := range l.trails {
		if i+1 < len(l.trails) {
			if next, _ := parseTrailName(l.trails[i+1]); next <= after+1 {
				continue
			}
		}
		_, err := scanFile(dir, name, func(line []byte, r record) error {
			if r.Sequence <= after {
				return nil
			}
			return fn(r.Sequence, line)
		})
		if err != nil {
			return err
		}
	}
	return nil
}
