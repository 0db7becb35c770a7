package audit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/internal/uuid"
)

// Config configures a Trail.
type Config struct {
	// Dir holds the trail: its files, digests and public key. It is
	// created (0700) if missing. One Trail at a time may own it.
	Dir string
	// MaxFileSize closes a file once it holds this many bytes; 0 means
	// DefaultMaxFileSize.
	MaxFileSize int64
	// RotationInterval closes a file this long after it was opened, and
	// writes a digest after this long without one; 0 or more than an hour
	// means an hour.
	RotationInterval time.Duration
	// Retention deletes sealed files and their digests once their newest
	// record is older than this (announced in the trail first); 0 keeps
	// everything.
	Retention time.Duration
	// Signer signs the digests.
	Signer Signer
	Logger hclog.Logger
	Now    func() time.Time
	// OnDurable, if set, is called by the writer with every batch once it
	// is on disk, before its callers are released: in sequence order, each
	// record once. It must be quick, must not call the Trail, and must not
	// keep the slice.
	OnDurable func(records []Durable)
	// Observe, if set, is told of every batch written: its records, how
	// long the write and fsync took, and whether it failed.
	Observe func(records int, d time.Duration, err error)
	// Pending, if set, says how many calls are under way that will append
	// a record (those already waiting in Append included). While some
	// have not appended yet, the writer waits up to CommitDelay for them
	// before writing, so they share its fsync: an fsync costs the
	// machine far more CPU than writing a record, and a call under way
	// usually appends within a fraction of one.
	Pending     func() int
	CommitDelay time.Duration
}

// Durable is a record on disk.
type Durable struct {
	Sequence uint64
	Event    *Event
}

// DefaultMaxFileSize is the size at which a file is closed by default.
const DefaultMaxFileSize = 100 << 20

// maxInterval is the longest a file stays open and the longest between
// digests: CloudTrail's digests are hourly.
const maxInterval = time.Hour

// ErrClosed is Append's answer once Close has begun.
var ErrClosed = errors.New("audit: trail closed")

// Trail writes the audit trail. Append is safe for concurrent use.
type Trail struct {
	cfg  Config
	log  hclog.Logger
	now  func() time.Time
	lock *os.File // flock on the directory's lock file

	mu     sync.Mutex
	cur    *batch // collecting; nil when none waits
	failed error  // sticky: the first write that failed
	closed bool

	wake     chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
	stopped  chan struct{}
	expire   chan struct{}
	bg       sync.WaitGroup
	depth    atomic.Int64

	// Owned by the writer goroutine (and by Open before it starts).
	id      string
	seq     uint64
	prev    [32]byte
	file    *os.File
	open    LogFile // the open file's entry, filled as it grows
	fhash   hash.Hash
	opened  time.Time
	alloc   int64     // bytes of the open file written as zeros ahead of the records
	pending []LogFile // closed files not yet in a digest
	last    lastDigest
	signErr error // the last signing failure, retried at the next seal
	buf     []byte
	durable []Durable // OnDurable's argument, reused
}

// lastDigest is what the next digest links to.
type lastDigest struct {
	seq       uint64
	name      string
	hash, sig string // hex
	end       time.Time
}

type batch struct {
	bodies [][]byte
	events []*Event
	done   chan struct{}
	first  uint64
	err    error
}

// Open recovers the trail in cfg.Dir (sealing what a run that did not
// stop cleanly left, see recover), starts its writer and writes the
// trail's start record.
func Open(cfg Config) (_ *Trail, err error) {
	if cfg.Signer == nil {
		return nil, errors.New("audit: no signer")
	}
	if cfg.MaxFileSize <= 0 {
		cfg.MaxFileSize = DefaultMaxFileSize
	}
	if cfg.RotationInterval <= 0 || cfg.RotationInterval > maxInterval {
		cfg.RotationInterval = maxInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	t := &Trail{cfg: cfg, log: cfg.Logger, now: cfg.Now, wake: make(chan struct{}, 1), stop: make(chan struct{}),
		stopped: make(chan struct{}), expire: make(chan struct{}, 1)}
	if t.lock, err = lockDir(cfg.Dir); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			unlockDir(t.lock)
		}
	}()
	if err := exportPublicKey(cfg.Dir, cfg.Signer.PublicKey()); err != nil {
		return nil, fmt.Errorf("audit: exporting the public key: %w", err)
	}
	start, err := t.recover()
	if err != nil {
		return nil, err
	}
	go t.writer()
	t.bg.Add(1)
	go t.expirer()
	if _, err := t.Append(context.Background(), start); err != nil {
		t.Close(context.Background())
		return nil, err
	}
	return t, nil
}

// lockDir takes the directory's lock: two processes appending to one
// trail would break its chain.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("audit: %s is in use by another hsmkms process: %w", dir, err)
	}
	return f, nil
}

// unlockDir releases the directory's lock, then closes its file. The
// explicit unlock matters: a child forked (to exec a command) while the
// file was open shares the lock until it execs, and closing alone would
// leave the lock held that long.
func unlockDir(f *os.File) error {
	uerr := syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return errors.Join(uerr, f.Close())
}

// ID is the trail's id, from its first record.
func (t *Trail) ID() string { return t.id }

// Err is nil while the trail can be written, else why not.
func (t *Trail) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

// QueueDepth is how many records wait to be written.
func (t *Trail) QueueDepth() int { return int(t.depth.Load()) }

// Append writes ev and returns once it is on disk, with its sequence
// number. ev's members must be complete; the trail adds the chain. The
// wait is not cut short by ctx: the caller must learn whether its record
// is durable, and the writer answers within one write and fsync.
func (t *Trail) Append(ctx context.Context, ev *Event) (uint64, error) {
	body, err := Marshal(ev)
	if err != nil {
		return 0, fmt.Errorf("audit: encoding %s: %w", ev.EventName, err)
	}
	t.mu.Lock()
	switch {
	case t.failed != nil:
		t.mu.Unlock()
		return 0, t.failed
	case t.closed:
		t.mu.Unlock()
		return 0, ErrClosed
	}
	b := t.cur
	if b == nil {
		b = &batch{done: make(chan struct{})}
		t.cur = b
	}
	i := len(b.bodies)
	b.bodies = append(b.bodies, body)
	b.events = append(b.events, ev)
	t.mu.Unlock()
	t.depth.Add(1)
	select {
	case t.wake <- struct{}{}:
	default:
	}
	<-b.done
	if b.err != nil {
		return 0, b.err
	}
	return b.first + uint64(i), nil
}

// Close writes the stop record, closes and seals the open file, and
// stops. Appends after it fail with ErrClosed.
func (t *Trail) Close(ctx context.Context) error {
	first := false
	t.stopOnce.Do(func() { first = true; close(t.stop) }) // the expirer first: it appends
	if !first {
		return ErrClosed
	}
	t.bg.Wait()
	_, err := t.Append(ctx, t.serviceEvent("StopAuditTrail", Fields{{"trailId", t.id}}))
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	select {
	case t.wake <- struct{}{}:
	default:
	}
	<-t.stopped
	if ferr := t.Err(); ferr != nil && err == nil {
		err = ferr
	}
	return errors.Join(err, unlockDir(t.lock))
}

// writer is the one goroutine that writes: it takes everything waiting
// as one batch (one write, one fsync), and closes files and writes
// digests when they are due.
func (t *Trail) writer() {
	defer close(t.stopped)
	timer := time.NewTimer(t.nextDeadline())
	defer timer.Stop()
	for {
		select {
		case <-t.wake:
		case <-timer.C:
		}
		t.gather()
		t.mu.Lock()
		b, closed := t.cur, t.closed
		t.cur = nil
		t.mu.Unlock()
		if b != nil {
			t.write(b)
		}
		if closed {
			t.mu.Lock()
			b = t.cur
			t.cur = nil
			t.mu.Unlock()
			if b != nil {
				b.err = ErrClosed
				t.depth.Add(-int64(len(b.bodies)))
				close(b.done)
			}
			if t.Err() == nil {
				t.closeFile()
				t.seal(SealStop)
			}
			return
		}
		if t.Err() == nil {
			t.rotateIfDue()
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(t.nextDeadline())
	}
}

// gather waits, at most CommitDelay, while calls under way have yet to
// append their records: the group commit's delay.
func (t *Trail) gather() {
	if t.cfg.Pending == nil || t.cfg.CommitDelay <= 0 {
		return
	}
	var deadline <-chan time.Time
	for {
		t.mu.Lock()
		queued, closed := 0, t.closed
		if t.cur != nil {
			queued = len(t.cur.bodies)
		}
		t.mu.Unlock()
		if queued == 0 || closed || t.cfg.Pending() <= queued {
			return
		}
		if deadline == nil {
			timer := time.NewTimer(t.cfg.CommitDelay)
			defer timer.Stop()
			deadline = timer.C
		}
		select {
		case <-t.wake:
		case <-deadline:
			return
		}
	}
}

// nextDeadline is how long until a file or a digest is due by age.
func (t *Trail) nextDeadline() time.Duration {
	now := t.now()
	due := t.last.end.Add(t.cfg.RotationInterval)
	if t.file != nil {
		due = t.opened.Add(t.cfg.RotationInterval)
	}
	if len(t.pending) > 0 && t.signErr != nil {
		// A digest the token could not sign is retried soon.
		due = now.Add(min(10*time.Second, t.cfg.RotationInterval))
	}
	return max(due.Sub(now), 10*time.Millisecond)
}

// rotateIfDue closes the open file when it is full or old, and writes a
// digest when one is due: for closed files, or an hour after the last.
func (t *Trail) rotateIfDue() {
	now := t.now()
	if t.file != nil && (t.open.Size >= t.cfg.MaxFileSize || !now.Before(t.opened.Add(t.cfg.RotationInterval))) {
		t.closeFile()
		t.seal(SealRotation)
		return
	}
	if len(t.pending) > 0 {
		t.seal(SealRotation) // a seal that failed to sign, again
		return
	}
	if t.file == nil && !now.Before(t.last.end.Add(t.cfg.RotationInterval)) {
		t.seal(SealInterval)
	}
}

// write writes one batch: the records chained, one write, one fsync.
func (t *Trail) write(b *batch) {
	start := time.Now()
	n := len(b.bodies)
	err := t.ensureFile()
	if err == nil {
		t.buf = t.buf[:0]
		first, prev := t.seq+1, t.prev
		for i, body := range b.bodies {
			t.buf, prev = appendChain(t.buf, body, first+uint64(i), prev)
			t.buf = append(t.buf, '\n')
		}
		err = t.preallocate(int64(len(t.buf)))
		if err == nil {
			_, err = t.file.WriteAt(t.buf, t.open.Size)
		}
		if err == nil {
			err = datasync(t.file)
		}
		if err == nil {
			t.fhash.Write(t.buf)
			b.first = first
			if t.open.Records == 0 {
				t.open.FirstSequence = first
				t.open.PreviousRecordHash = hex.EncodeToString(t.prev[:])
			}
			for _, ev := range b.events {
				t.open.noteTime(ev.EventTime)
			}
			t.open.Records += uint64(n)
			t.open.LastSequence = first + uint64(n) - 1
			t.open.Size += int64(len(t.buf))
			t.seq, t.prev = t.open.LastSequence, prev
		}
	}
	if err != nil {
		err = t.fail(fmt.Errorf("audit: writing %s: %w", t.open.File, err))
		b.err = err
	} else if t.cfg.OnDurable != nil {
		t.durable = t.durable[:0]
		for i, ev := range b.events {
			t.durable = append(t.durable, Durable{Sequence: b.first + uint64(i), Event: ev})
		}
		t.cfg.OnDurable(t.durable)
	}
	if t.cfg.Observe != nil {
		t.cfg.Observe(n, time.Since(start), err)
	}
	t.depth.Add(-int64(n))
	close(b.done)
}

func (l *LogFile) noteTime(s string) {
	if l.OldestEventTime == "" || s < l.OldestEventTime {
		l.OldestEventTime = s
	}
	if s > l.NewestEventTime {
		l.NewestEventTime = s
	}
}

// Fail makes the trail fail as a failed write does: every Append after it
// fails, until a new Trail is opened on the directory. An operator's way to
// stop every call, and tests' way to see what callers then do.
func (t *Trail) Fail(err error) { t.fail(err) }

// fail makes the trail fail for good: after a failed write or fsync the
// file's state is unknown, so nothing more is written to it, and nothing
// more is done unaudited.
func (t *Trail) fail(err error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.failed == nil {
		t.failed = err
		t.log.Error("audit trail failed: every call fails until hsmkms is restarted", "error", err)
	}
	return t.failed
}

// ensureFile opens a new file for the next record if none is open. Its
// directory entry is fsynced before anything in it is acknowledged.
func (t *Trail) ensureFile() error {
	if t.file != nil {
		return nil
	}
	now := t.now()
	name := trailName(t.seq+1, now)
	f, err := os.OpenFile(filepath.Join(t.cfg.Dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := syncDir(t.cfg.Dir); err != nil {
		f.Close()
		return err
	}
	t.file, t.opened, t.fhash, t.alloc = f, now, sha256.New(), 0
	t.open = LogFile{File: name, HashAlgorithm: hashAlgorithm}
	return nil
}

// preallocChunk is how far ahead of the records a file is written with
// zeros. Records then overwrite blocks the file already has, and
// fdatasync has no file size or block allocation to journal: measured on
// the reference machine, that halves an fdatasync's wall time and takes
// 40% off its CPU. Readers stop at the first NUL byte (never in a record);
// a file is cut to its records when it is closed, and at the next start
// after a crash.
const preallocChunk = 4 << 20

// preallocate makes sure the open file has zeros for n more bytes of
// records. They are made durable by the fdatasync that follows the
// records.
func (t *Trail) preallocate(n int64) error {
	end := t.open.Size + n
	if end <= t.alloc {
		return nil
	}
	chunk := min(int64(preallocChunk), max(t.cfg.MaxFileSize, n))
	target := (end + chunk - 1) / chunk * chunk
	for t.alloc < target {
		z := zeroBlock[:min(int64(len(zeroBlock)), target-t.alloc)]
		if _, err := t.file.WriteAt(z, t.alloc); err != nil {
			return err
		}
		t.alloc += int64(len(z))
	}
	return nil
}

var zeroBlock = make([]byte, 256<<10)

// closeFile closes the open file, cut to its records; it waits in
// pending for its digest.
func (t *Trail) closeFile() {
	if t.file == nil {
		return
	}
	if err := t.file.Truncate(t.open.Size); err != nil {
		t.fail(fmt.Errorf("audit: closing %s: %w", t.open.File, err))
	} else if err := t.file.Sync(); err != nil {
		t.fail(fmt.Errorf("audit: closing %s: %w", t.open.File, err))
	}
	if err := t.file.Close(); err != nil {
		t.fail(fmt.Errorf("audit: closing %s: %w", t.open.File, err))
	}
	t.open.HashValue = hex.EncodeToString(t.fhash.Sum(nil))
	t.open.LastRecordHash = hex.EncodeToString(t.prev[:])
	t.pending = append(t.pending, t.open)
	t.file = nil
}

// seal writes a digest of the pending files, signed on the token. A
// signing failure (the token is down) leaves them pending, retried soon;
// the records stay protected by their chain meanwhile. A failure to write
// the digest fails the trail.
func (t *Trail) seal(reason string) {
	now := t.now()
	d := &Digest{
		TrailID:                    t.id,
		DigestSequence:             t.last.seq + 1,
		DigestStartTime:            t.last.end.Format(TimeLayout),
		DigestEndTime:              now.UTC().Format(TimeLayout),
		DigestFile:                 digestName(t.last.seq+1, now),
		DigestPublicKeyFingerprint: Fingerprint(t.cfg.Signer.PublicKey()),
		DigestSignatureAlgorithm:   signatureAlgorithm,
		Reason:                     reason,
		LogFiles:                   t.pending,
	}
	if d.LogFiles == nil {
		d.LogFiles = []LogFile{}
	}
	if t.last.seq == 0 {
		d.DigestStartTime = d.DigestEndTime
	}
	for i := range d.LogFiles {
		f := &d.LogFiles[i]
		if f.Records == 0 {
			continue
		}
		if d.OldestEventTime == "" || f.OldestEventTime < d.OldestEventTime {
			d.OldestEventTime = f.OldestEventTime
		}
		if f.NewestEventTime > d.NewestEventTime {
			d.NewestEventTime = f.NewestEventTime
		}
	}
	if t.last.seq > 0 {
		d.PreviousDigestFile, d.PreviousDigestHashValue = t.last.name, t.last.hash
		d.PreviousDigestHashAlgorithm, d.PreviousDigestSignature = hashAlgorithm, t.last.sig
	}
	data, err := encodeDigest(d)
	if err != nil {
		t.fail(fmt.Errorf("audit: encoding digest: %w", err))
		return
	}
	sum := sha256.Sum256(data)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	sig, err := t.cfg.Signer.Sign(ctx, sum[:])
	cancel()
	if err != nil {
		if t.signErr == nil {
			t.log.Error("audit digest not signed: the token did not sign; retrying", "error", err, "files", len(t.pending))
		}
		t.signErr = err
		return
	}
	t.signErr = nil
	if err := writeFileSync(t.cfg.Dir, d.DigestFile, data, 0o600); err != nil {
		t.fail(fmt.Errorf("audit: writing %s: %w", d.DigestFile, err))
		return
	}
	if err := writeFileSync(t.cfg.Dir, d.DigestFile+".sig", sig, 0o600); err != nil {
		t.fail(fmt.Errorf("audit: writing %s.sig: %w", d.DigestFile, err))
		return
	}
	t.last = lastDigest{seq: d.DigestSequence, name: d.DigestFile, hash: hex.EncodeToString(sum[:]),
		sig: hex.EncodeToString(sig), end: now}
	t.pending = nil
	if t.cfg.Retention > 0 {
		select {
		case t.expire <- struct{}{}:
		default:
		}
	}
}

// serviceEvent is one of the trail's own records.
func (t *Trail) serviceEvent(name string, details Fields) *Event {
	return &Event{
		EventVersion: EventVersion, UserIdentity: UserIdentity{InvokedBy: Internal},
		EventTime: t.now().UTC().Format(TimeLayout), EventSource: TrailSource, EventName: name,
		SourceIPAddress: Internal, UserAgent: Internal, EventID: NewID(), EventType: ServiceEvent,
		ManagementEvent: true, ServiceEventDetails: details, EventCategory: "Management",
	}
}

// NewID is a random (version 4) UUID, the form of CloudTrail's eventID.
func NewID() string { return uuid.String() }

func datasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }
