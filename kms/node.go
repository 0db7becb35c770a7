package kms

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"time"

	"github.com/hsmkms/hsmkms/kms/store"
)

// Several nodes, one service. Nodes share the metadata database and the
// tokens; everything a node knows that another may need is in the
// database (store.Coordination):
//
//   - Key cache: each node keeps copies of keys and drops them when the
//     store's change feed (PostgreSQL LISTEN/NOTIFY) says another node
//     changed one; while the feed is not known to be complete it reads
//     through (store.KeyCache).
//   - Work done once: the deletion reaper and the rotation scheduler run
//     on every node, and each key due is claimed with a mark before any
//     work on it, and looked at again once claimed; the on-demand rotation
//     mark is the same kind of mark, visible to every node.
//   - Custom key stores: one node connects a store (and rotates its
//     kmsuser password, once, under a database lock); every node logs in
//     to its token; each node records its login, and every node reports
//     the same state from the records (customkeystores.go).
//   - Liveness: each node records a heartbeat every syncInterval. A mark
//     whose holder's heartbeat is older than staleAfter, or whose holder
//     started again since, is taken over at once; otherwise it expires.

const (
	// defaultSyncInterval is how often a node records its heartbeat and
	// looks at the custom key stores (it also looks at once when told of
	// a change).
	defaultSyncInterval = 2 * time.Second
	// markTTL bounds how long a claim holds without its holder being
	// known dead; work under a claim is given half of it.
	markTTL = 10 * time.Minute
)

// staleAfter is how old a node's heartbeat may be before the node is taken
// for dead: a few missed heartbeats, with room for clock skew between
// machines (keep them within a second of each other).
func (s *Service) staleAfter() time.Duration { return 3*s.syncInterval + 2*time.Second }

var nodeIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$`)

// ValidNodeID reports whether id can name a node: 1-64 letters, digits,
// '.', '_', ':' and '-', starting with a letter or digit.
func ValidNodeID(id string) bool { return nodeIDRe.MatchString(id) }

// DefaultNodeID is the node id of a node configured with none: the host
// name, stable across restarts on one machine.
func DefaultNodeID() string {
	h, err := os.Hostname()
	if err != nil || !ValidNodeID(h) {
		return "hsmkms"
	}
	return h
}

// NodeID is this node's id, as logs (and metrics and audit records) name it.
func (s *Service) NodeID() string { return s.node }

// joinCluster records this node in the store before it does anything
// else there. On a shared store it first makes sure no other running
// node uses the same id: a node whose heartbeat is fresh and keeps beating
// is refused, since two nodes with one id would release each other's
// marks. Then it drops what a previous run of this node left: its marks
// (nothing it claimed is being worked on any more) and its logins.
func (s *Service) joinCluster(ctx context.Context) error {
	if s.shared {
		if n, err := s.store.GetNode(ctx, s.node); err == nil && time.Since(n.Heartbeat) < s.staleAfter() {
			s.log.Info("a node with this id beat recently: waiting to see whether it still runs", "node", s.node)
			select {
			case <-time.After(s.staleAfter()):
			case <-ctx.Done():
				return ctx.Err()
			}
			if again, err := s.store.GetNode(ctx, s.node); err == nil && again.Heartbeat.After(n.Heartbeat) {
				return fmt.Errorf("kms: node id %q is in use by another running node (its heartbeat goes on); give each node its own node_id", s.node)
			}
		} else if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
	}
	if err := s.store.Heartbeat(ctx, s.node, s.started, time.Now()); err != nil {
		return err
	}
	if err := s.store.DeleteNodeMarks(ctx, s.node); err != nil {
		return err
	}
	return s.store.ResetNodeLogins(ctx, s.node, time.Now())
}

// leaveCluster records that this node stopped: its heartbeat is zero, so
// the others stop waiting for it at once.
func (s *Service) leaveCluster(ctx context.Context) {
	if err := s.store.ResetNodeLogins(ctx, s.node, time.Now()); err != nil {
		s.log.Warn("recording this node's logins as ended", "error", err)
	}
	if err := s.store.Heartbeat(ctx, s.node, s.started, time.Time{}); err != nil {
		s.log.Warn("recording this node as stopped", "error", err)
	}
}

// runCluster records the heartbeat and looks at the custom key stores
// every syncInterval, and at once when told of a change, until ctx ends.
func (s *Service) runCluster(ctx context.Context) {
	t := time.NewTicker(s.syncInterval)
	defer t.Stop()
	failing := false
	for {
		hctx, cancel := context.WithTimeout(ctx, max(s.syncInterval, 5*time.Second))
		err := s.store.Heartbeat(hctx, s.node, s.started, time.Now())
		if err == nil {
			s.syncKeyStores(hctx)
			s.syncXKSStores(hctx)
			s.refreshDomainKeys(hctx)
		}
		cancel()
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			s.log.Error("the metadata database does not answer; this node answers requests that need it with errors until it does", "error", err)
			failing = true
		case err == nil && failing:
			s.log.Info("the metadata database answers again")
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		}
	}
}

// refreshDomainKeys follows, on a shared database, the domain keys another
// node rotated or destroyed: a node makes new material under the ACTIVE
// one the database names, not one another node retired (material under a
// retired key would only wait for the next rewrap; under a destroyed one
// the store refuses it). Told at once through the change feed, and every
// syncInterval anyway; one read per store when nothing changed.
func (s *Service) refreshDomainKeys(ctx context.Context) {
	if !s.shared {
		return
	}
	for _, ks := range s.hierarchyStores() {
		if err := ks.RefreshDomainKeys(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("reading the domain keys another node changed", "store", ks.ID(), "error", err)
		}
	}
}

// kickSync makes runCluster look at the key stores now.
func (s *Service) kickSync() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// claim takes the mark name for this node, with detail for the others to
// read, and returns what releases it: store.ErrMarkHeld if a live node
// holds it. A mark whose holder is dead (stale heartbeat, restarted, or
// this node's previous run) is taken over.
func (s *Service) claim(ctx context.Context, name, detail string) (release func(), err error) {
	now := time.Now()
	m := store.Mark{Name: name, Node: s.node, Detail: detail, Started: now, Expires: now.Add(markTTL)}
	err = s.store.TakeMark(ctx, m)
	if errors.Is(err, store.ErrMarkHeld) {
		cur, gerr := s.store.GetMark(ctx, name)
		if gerr == nil && s.markStale(ctx, cur) {
			s.log.Info("taking over work claimed by a node that is gone", "work", name, "node", cur.Node, "since", cur.Started.UTC())
			if err = s.store.DeleteMark(ctx, cur.Name, cur.Node, cur.Started); err == nil {
				err = s.store.TakeMark(ctx, m)
			}
		} else if gerr != nil && !errors.Is(gerr, store.ErrNotFound) {
			err = gerr
		}
	}
	if err != nil {
		return nil, err
	}
	return func() {
		if err := s.store.DeleteMark(context.WithoutCancel(ctx), name, s.node, m.Started); err != nil {
			s.log.Warn("releasing a claim (it expires by itself)", "work", name, "error", err)
		}
	}, nil
}

// markStale reports whether m's holder is gone: its time is up, it is this
// node's previous run, or its node stopped beating or started again since.
func (s *Service) markStale(ctx context.Context, m *store.Mark) bool {
	now := time.Now()
	switch {
	case !m.Expires.After(now):
		return true
	case m.Node == s.node:
		return m.Started.Before(s.started)
	}
	n, err := s.store.GetNode(ctx, m.Node)
	if errors.Is(err, store.ErrNotFound) {
		return true
	}
	if err != nil {
		return false
	}
	return now.Sub(n.Heartbeat) > s.staleAfter() || n.Started.After(m.Started)
}

// liveMark returns the mark name if a live node holds it, else nil.
func (s *Service) liveMark(ctx context.Context, name string) (*store.Mark, error) {
	m, err := s.store.GetMark(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if s.markStale(ctx, m) {
		return nil, nil
	}
	return m, nil
}

// DatabaseReady reports whether the metadata database answers now (for
// /readyz): nil, or why not.
func (s *Service) DatabaseReady(ctx context.Context) error {
	if err := s.store.Ping(ctx); err != nil {
		return fmt.Errorf("the metadata database does not answer: %w", err)
	}
	return nil
}

// KeyCacheLive reports whether this node serves keys from its cache
// (true) or reads every key from the database because its change feed is
// down (false): the node still works, more slowly.
func (s *Service) KeyCacheLive() bool { return s.cache.Live() }
