package audit

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Problem is the first thing found wrong in a trail: which file, which
// line and record, and what. It is what `hsmkms audit verify` reports.
type Problem struct {
	File     string // the trail or digest file
	Line     int    // 1-based; 0 when about the file as a whole
	Sequence uint64 // the record's sequence number, when known
	Reason   string
}

func (p *Problem) Error() string {
	switch {
	case p.Line > 0 && p.Sequence > 0:
		return fmt.Sprintf("%s: line %d (record %d): %s", p.File, p.Line, p.Sequence, p.Reason)
	case p.Line > 0:
		return fmt.Sprintf("%s: line %d: %s", p.File, p.Line, p.Reason)
	case p.Sequence > 0:
		return fmt.Sprintf("%s: record %d: %s", p.File, p.Sequence, p.Reason)
	}
	return fmt.Sprintf("%s: %s", p.File, p.Reason)
}

// maxLine bounds a record's line: the largest event (a CreateKey with a
// 32 KiB policy, every member escaped) is far smaller.
const maxLine = 1 << 20

// scanned is what scanFile found in a trail file.
type scanned struct {
	entry LogFile
	last  [32]byte // the last record's hash
	// problem is the first inconsistency inside the file, nil if none:
	// a line that is not a record, a sequence gap, a broken link.
	problem *Problem
}

// scanFile reads a trail file: every complete line must be a record,
// numbered one after the other and each linked to the one before it.
// Bytes after the last newline are TornBytes. visit, if set, is called
// with every record's line (without its newline) in order; an error from
// it stops the scan and is returned.
func scanFile(dir, name string, visit func(line []byte, r record) error) (*scanned, error) {
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	var size counter
	br := bufio.NewReaderSize(io.TeeReader(f, io.MultiWriter(h, &size)), 64<<10)
	s := &scanned{entry: LogFile{File: name, HashAlgorithm: hashAlgorithm}}
	var prev [32]byte
	lineNo := 0
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		buf = append(buf, chunk...)
		if errors.Is(err, bufio.ErrBufferFull) {
			if len(buf) > maxLine {
				if s.problem == nil {
					s.problem = &Problem{File: name, Line: lineNo + 1, Reason: "line longer than any record"}
				}
				// Skip the rest of the line.
				buf = buf[:0]
				for errors.Is(err, bufio.ErrBufferFull) {
					_, err = br.ReadSlice('\n')
				}
				if err == nil {
					lineNo++
				}
				continue
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		if errors.Is(err, io.EOF) {
			s.entry.TornBytes = int64(len(buf))
			break
		}
		lineNo++
		line := buf[:len(buf)-1]
		r, perr := parseRecord(line)
		if perr != nil {
			if s.problem == nil {
				s.problem = &Problem{File: name, Line: lineNo, Reason: perr.Error()}
			}
			buf = buf[:0]
			continue
		}
		if s.entry.Records == 0 {
			s.entry.FirstSequence = r.Sequence
			s.entry.PreviousRecordHash = hex.EncodeToString(r.Previous[:])
			s.entry.OldestEventTime = r.Time.Format(TimeLayout)
			s.entry.NewestEventTime = s.entry.OldestEventTime
		} else if s.problem == nil {
			switch {
			case r.Sequence != s.entry.LastSequence+1:
				s.problem = &Problem{File: name, Line: lineNo, Sequence: r.Sequence,
					Reason: fmt.Sprintf("follows record %d: records are missing or out of order", s.entry.LastSequence)}
			case r.Previous != prev:
				s.problem = &Problem{File: name, Line: lineNo, Sequence: r.Sequence,
					Reason: fmt.Sprintf("previousHash does not match record %d: a record was changed, removed or inserted", s.entry.LastSequence)}
			}
		}
		if t := r.Time.Format(TimeLayout); t < s.entry.OldestEventTime {
			s.entry.OldestEventTime = t
		} else if t > s.entry.NewestEventTime {
			s.entry.NewestEventTime = t
		}
		s.entry.Records++
		s.entry.LastSequence = r.Sequence
		prev = r.Hash
		if visit != nil {
			if err := visit(line, r); err != nil {
				return nil, err
			}
		}
		buf = buf[:0]
	}
	s.entry.Size = int64(size)
	s.last = prev
	s.entry.LastRecordHash = hex.EncodeToString(prev[:])
	s.entry.HashValue = hex.EncodeToString(h.Sum(nil))
	return s, nil
}

type counter int64

func (c *counter) Write(p []byte) (int, error) {
	*c += counter(len(p))
	return len(p), nil
}
