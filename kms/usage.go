package kms

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/kms/audit"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// Keys' last use (GetKeyLastUsage). A successful call of a tracked
// operation (the operation table's tracked column: AWS's list) is the last
// use of each key it acted on, both keys of a ReEncrypt. It is noted in
// memory when its audit record is durable (the trail's OnDurable, in
// record order) and written to the store in one transaction every
// UsageFlushInterval, never per call, with the trail record up to which
// the store is complete. A clean stop writes what is left; the start
// after a crash replays the trail's records past that point, so what a
// crash loses of the store, the trail (durable before any answer) still
// has. Without a trail, a crash loses at most one interval of it.

// DefaultUsageFlushInterval is how often keys' last use is written.
const DefaultUsageFlushInterval = time.Second

// usageTracker keeps keys' last use between writes. Safe for concurrent
// use.
type usageTracker struct {
	store   store.Store
	log     hclog.Logger
	tracked map[string]bool // operation names

	mu sync.Mutex
	// keys holds what was noted and not yet written: account/region/id →
	// the newest use.
	keys  map[string]*store.KeyUsage
	dirty map[string]bool
	trail string // the audit trail's id ("" without one)
	seq   uint64 // every record of trail up to seq is noted
	start time.Time
	// flushed is the seq the store last recorded.
	flushed uint64
}

func newUsageTracker(st store.Store, log hclog.Logger, ops []*operation) *usageTracker {
	u := &usageTracker{store: st, log: log, tracked: map[string]bool{}, keys: map[string]*store.KeyUsage{}, dirty: map[string]bool{}}
	for _, op := range ops {
		if op.tracked {
			u.tracked[op.name] = true
		}
	}
	return u
}

// note records a tracked operation's success on the keys arns name.
func (u *usageTracker) note(op string, when time.Time, eventID, requestID string, arns []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.noteLocked(op, when, eventID, requestID, arns)
}

func (u *usageTracker) noteLocked(op string, when time.Time, eventID, requestID string, arns []string) {
	for _, a := range arns {
		p, ok := parseARN(a)
		if !ok {
			continue
		}
		id := p.Resource[len("key/"):]
		k := cacheKey(p.Account, p.Region, id)
		if cur := u.keys[k]; cur != nil && cur.Time.After(when) {
			continue
		}
		u.keys[k] = &store.KeyUsage{Account: p.Account, Region: p.Region, KeyID: id, Operation: op, Time: when.UTC(), EventID: eventID, RequestID: requestID}
		u.dirty[k] = true
	}
}

func cacheKey(account, region, id string) string { return account + "/" + region + "/" + id }

// durable notes the records of one batch of the trail, in order.
func (u *usageTracker) durable(recs []audit.Durable) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, r := range recs {
		u.noteEvent(r.Event)
		u.seq = r.Sequence
	}
}

// noteEvent notes a record of a tracked operation's success.
func (u *usageTracker) noteEvent(ev *audit.Event) {
	if ev.EventType != audit.APICall || ev.EventSource != audit.KMSSource || ev.ErrorCode != "" || !u.tracked[ev.EventName] {
		return
	}
	when := ev.Time
	if when.IsZero() {
		var err error
		if when, err = time.Parse(audit.TimeLayout, ev.EventTime); err != nil {
			return
		}
	}
	var arns []string
	for _, res := range ev.Resources {
		if res.Type == "AWS::KMS::Key" {
			arns = append(arns, res.ARN)
		}
	}
	u.noteLocked(ev.EventName, when, ev.EventID, ev.RequestID, arns)
}

// replay notes the trail's records past after: what the store may lack
// after a crash.
func (u *usageTracker) replay(dir string, after uint64) error {
	n := 0
	err := audit.Records(dir, after, func(seq uint64, line []byte) error {
		var ev audit.Event
		if json.Unmarshal(line, &ev) == nil {
			u.mu.Lock()
			u.noteEvent(&ev)
			if seq > u.seq {
				u.seq = seq
			}
			u.mu.Unlock()
			n++
		}
		return nil
	})
	if n > 0 {
		u.log.Info("keys' last use replayed from the audit trail", "records", n, "after", after)
	}
	return err
}

// flush writes what changed since the last flush, with how far the trail
// is noted. What fails to be written stays for the next one.
func (u *usageTracker) flush(ctx context.Context) error {
	u.mu.Lock()
	batch := make([]store.KeyUsage, 0, len(u.dirty))
	for k := range u.dirty {
		batch = append(batch, *u.keys[k])
	}
	clear(u.dirty)
	trail, seq := u.trail, u.seq
	u.mu.Unlock()
	if len(batch) == 0 && (trail == "" || seq == u.flushed) {
		return nil
	}
	if err := u.store.RecordKeyUsage(ctx, batch, trail, seq); err != nil {
		u.mu.Lock()
		for _, b := range batch {
			k := cacheKey(b.Account, b.Region, b.KeyID)
			if _, newer := u.dirty[k]; !newer {
				u.dirty[k] = true
			}
		}
		u.mu.Unlock()
		return err
	}
	// The store holds these now (or newer): keep in memory only what was
	// noted since the batch was taken, so that the tracker holds one
	// interval's keys, not every key ever used (100,000 keys in use kept
	// ~45 MB live, and every garbage collection scanned it).
	u.mu.Lock()
	for _, b := range batch {
		if k := cacheKey(b.Account, b.Region, b.KeyID); !u.dirty[k] {
			delete(u.keys, k)
		}
	}
	if len(u.keys) == 0 {
		u.keys = map[string]*store.KeyUsage{} // a map never shrinks its table
	}
	u.mu.Unlock()
	u.flushed = seq
	return nil
}

// held is how many keys' last use the tracker holds in memory.
func (u *usageTracker) held() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.keys)
}

// run flushes every interval until ctx ends.
func (u *usageTracker) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := u.flush(ctx); err != nil && ctx.Err() == nil {
			u.log.Error("writing keys' last use; retrying", "error", err)
		}
	}
}

// last is a key's last use: the newer of what this node noted in this
// run and what the store holds (other nodes sharing the store write
// theirs there); nil if none since tracking began.
//
// With several nodes each flushes its own observations, and the store
// keeps the newest use of each key (its write never goes back in time),
// so the order in which nodes flush does not matter. The one tracking row
// (trail, sequence) is the last flusher's: a node that finds another's
// there at start replays its whole trail, which costs time, not
// correctness.
func (u *usageTracker) last(ctx context.Context, account, region, id string) (*store.KeyUsage, error) {
	u.mu.Lock()
	cur := u.keys[cacheKey(account, region, id)]
	var mine *store.KeyUsage
	if cur != nil {
		cp := *cur
		mine = &cp
	}
	u.mu.Unlock()
	k, err := u.store.KeyUsage(ctx, account, region, id)
	switch {
	case isNotFound(err):
		return mine, nil
	case err != nil:
		return nil, err
	case mine != nil && mine.Time.After(k.Time):
		return mine, nil
	}
	return k, nil
}

type GetKeyLastUsageInput struct {
	KeyId string
}

type KeyLastUsageData struct {
	Operation         string     `json:",omitempty"`
	Timestamp         *wire.Time `json:",omitempty"`
	CloudTrailEventId string     `json:",omitempty"`
	KmsRequestId      string     `json:",omitempty"`
}

type GetKeyLastUsageOutput struct {
	KeyId             string
	KeyLastUsage      *KeyLastUsageData `json:",omitempty"`
	TrackingStartDate wire.Time
	KeyCreationDate   wire.Time
}

// GetKeyLastUsage answers from memory or the store: never from the
// token. A key id or key ARN only (the table refuses aliases, as AWS).
func (s *Service) GetKeyLastUsage(ctx context.Context, r *Request, in *GetKeyLastUsageInput) (*GetKeyLastUsageOutput, error) {
	k, err := s.key(ctx, r, in.KeyId, access{})
	if err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	u, err := s.usage.last(ctx, k.Account, k.Region, k.ID)
	if err != nil {
		return nil, err
	}
	s.usage.mu.Lock()
	start := s.usage.start
	s.usage.mu.Unlock()
	if k.CreationDate.After(start) {
		start = k.CreationDate
	}
	out := &GetKeyLastUsageOutput{KeyId: k.ID, TrackingStartDate: wire.Time(start), KeyCreationDate: wire.Time(k.CreationDate)}
	if u != nil {
		// The second of the call's record's eventTime (CloudTrail's
		// precision), so the two agree.
		ts := wire.Time(u.Time.Truncate(time.Second))
		out.KeyLastUsage = &KeyLastUsageData{Operation: u.Operation, Timestamp: &ts, CloudTrailEventId: u.EventID, KmsRequestId: u.RequestID}
	}
	return out, nil
}
