package audit

import (
	"bufio"
	"bytes"
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
	// padding counts the zero bytes after the records: space written
	// ahead of them, in a file still open or left open by a crash. end is
	// where the records (and any torn bytes) end.
	padding int64
}

// scanFile reads a trail file: every complete line must be a record,
// numbered one after the other and each linked to the one before it. A
// NUL byte (never in a record) ends the file's data: bytes from the last
// newline to it are TornBytes, and every byte after it must be zero
// (padding). entry.Size and entry.HashValue cover the data only. visit,
// if set, is called with every record's line (without its newline) in
// order; an error from it stops the scan and is returned.
func scanFile(dir, name string, visit func(line []byte, r record) error) (*scanned, error) {
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	br := bufio.NewReaderSize(f, 64<<10)
	s := &scanned{entry: LogFile{File: name, HashAlgorithm: hashAlgorithm}}
	var prev [32]byte
	lineNo := 0
	var buf []byte
	lineLen := 0 // of the line being read, which buf holds unless it is too long
	consume := func(b []byte) {
		h.Write(b)
		s.entry.Size += int64(len(b))
	}
	for {
		chunk, err := br.ReadSlice('\n')
		if z := bytes.IndexByte(chunk, 0); z >= 0 {
			// The data ends here; the rest must be zeros.
			consume(chunk[:z])
			s.entry.TornBytes = int64(lineLen + z)
			s.padding = int64(len(chunk) - z)
			n, perr := zeros(br)
			if perr != nil {
				return nil, perr
			}
			if n < 0 || bytes.ContainsFunc(chunk[z:], func(r rune) bool { return r != 0 }) {
				if s.problem == nil {
					s.problem = &Problem{File: name, Line: lineNo + 1, Reason: "bytes after the end of the records"}
				}
				n = 0
			}
			s.padding += n
			break
		}
		consume(chunk)
		lineLen += len(chunk)
		if lineLen <= maxLine+1 {
			buf = append(buf, chunk...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		if errors.Is(err, io.EOF) {
			s.entry.TornBytes = int64(lineLen)
			break
		}
		lineNo++
		if lineLen > maxLine+1 {
			if s.problem == nil {
				s.problem = &Problem{File: name, Line: lineNo, Reason: "line longer than any record"}
			}
			buf, lineLen = buf[:0], 0
			continue
		}
		line := buf[:len(buf)-1]
		r, perr := parseRecord(line)
		if perr != nil {
			if s.problem == nil {
				s.problem = &Problem{File: name, Line: lineNo, Reason: perr.Error()}
			}
			buf, lineLen = buf[:0], 0
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
		buf, lineLen = buf[:0], 0
	}
	s.last = prev
	s.entry.LastRecordHash = hex.EncodeToString(prev[:])
	s.entry.HashValue = hex.EncodeToString(h.Sum(nil))
	return s, nil
}

// zeros reads r to its end and counts its bytes: negative if any is not
// zero.
func zeros(r io.Reader) (int64, error) {
	var n int64
	bad := false
	buf := make([]byte, 64<<10)
	for {
		k, err := r.Read(buf)
		for _, c := range buf[:k] {
			if c != 0 {
				bad = true
			}
		}
		n += int64(k)
		if errors.Is(err, io.EOF) {
			if bad {
				return -1, nil
			}
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}
