package kms

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"time"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/audit"
	"github.com/hsmkms/hsmkms/kms/store"
)

// Custom key stores on several nodes.
//
// A store's connection has two sides. The shared one is in the database:
// the store's ConnectionState (DISCONNECTED, CONNECTING, CONNECTED, FAILED
// with its code), which ConnectCustomKeyStore and DisconnectCustomKeyStore
// set on whichever node they reach. The local one is each node's login to
// the store's token (keystore.Store's state), which each node records
// (store.KeyStoreLogin) so that every node reports the same state:
//
//	shared state   reported state
//	DISCONNECTED   DISCONNECTED
//	CONNECTING     CONNECTING
//	FAILED         FAILED, with the connecting node's code
//	CONNECTED      CONNECTED while any live node is logged in; else FAILED
//	               with the latest code a live node met; else CONNECTING
//
// Connecting: the node that takes ConnectCustomKeyStore claims the store's
// connect mark, sets CONNECTING, and in the background logs in (resolving
// a password rotation a crash cut short), waits a little for the other
// live nodes to log in too, rotates the kmsuser password once, and sets
// CONNECTED, or FAILED with the code. Every login and the rotation hold
// the database's tokens lock (tokensLock, lifecycle.go), so no two nodes
// touch a token's PIN state at once (SoftHSM2 rewrites its token.object at
// every login).
//
// Every node's sync (runCluster: every syncInterval, and at once when the
// change feed tells of a key store change) brings the node in line: it
// registers stores it did not know, logs in to CONNECTING and CONNECTED
// stores with the current password (never writing any: only the
// connecting node does), picks up a new password after a rotation
// (keystore.Store.UsePassword), logs out of the others, and takes over a
// connection whose connecting node died (CONNECTING with no live mark). A
// node that cannot log in keeps retrying every sync, except with a
// password the token refused: that one it never tries again, since real
// HSMs lock a user out after a few wrong PINs. Until it is logged in it
// answers KMSInvalidStateException for the store's keys.
//
// Why the connecting node waits for the others before rotating: a
// SoftHSM2 process keeps the user PIN it loaded, so a process that did not
// log in before another changed the PIN cannot log in with the new one
// until it restarts (see the README). HSMs proper see the change at once;
// for them the wait costs a connect at most 3 sync intervals.

// keyStoreSync is what a node's sync keeps between passes, per store.
type keyStoreSync struct {
	mu sync.Mutex
	// password is the sealed password last given to the store's token.
	password map[string][]byte
	// refused is the sealed password a login last failed with
	// INVALID_CREDENTIALS: not tried again.
	refused map[string][]byte
	// failure is the code of the last failed login, kept while retrying.
	failure map[string]keystore.ErrorCode
	// recorded is the login state last recorded in the database.
	recorded map[string]string
}

func (k *keyStoreSync) get(m *map[string][]byte, id string) []byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	return (*m)[id]
}

func (k *keyStoreSync) set(m *map[string][]byte, id string, v []byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if *m == nil {
		*m = map[string][]byte{}
	}
	(*m)[id] = v
}

func (k *keyStoreSync) lastFailure(id string) keystore.ErrorCode {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.failure[id]
}

func (k *keyStoreSync) setFailure(id string, code keystore.ErrorCode) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.failure == nil {
		k.failure = map[string]keystore.ErrorCode{}
	}
	k.failure[id] = code
}

func connectMark(id string) string { return "connect/" + id }

// registered returns this node's Store for ks, registering it (with its
// cluster) if this node did not know it yet, and following a cluster
// change made on another node once this node is logged out of it.
func (s *Service) registered(ks *store.KeyStore) *keystore.Store {
	live, err := s.keystores.Get(ks.ID)
	if err == nil {
		if live.ClusterID() != ks.ClusterID {
			if st, _ := live.State(); st == keystore.Disconnected {
				live.SetCluster(s.clusterFor(ks))
			}
		}
		return live
	}
	return s.keystores.AddCustom(ks.ID, s.clusterFor(ks))
}

// clusterFor is the declared cluster of ks, or, if this node's
// configuration does not declare it, one that connecting reports as
// CLUSTER_NOT_FOUND.
func (s *Service) clusterFor(ks *store.KeyStore) keystore.Cluster {
	cl, ok := s.clusters[ks.ClusterID]
	if !ok {
		s.log.Warn("custom key store's cluster is not declared on this node", "store", ks.ID, "cluster", ks.ClusterID)
		cl = keystore.Cluster{ID: ks.ClusterID, Token: keystore.TokenConfig{Module: "/nonexistent-cluster/" + ks.ClusterID, Label: ks.ClusterID}}
	}
	return cl
}

// forget logs out of a deleted store and drops it.
func (s *Service) forget(ctx context.Context, id string) {
	live, err := s.keystores.Get(id)
	if err != nil {
		return
	}
	if err := live.Disconnect(ctx); err != nil && !errors.Is(err, keystore.ErrInvalidState) {
		s.log.Warn("logging out of a deleted key store", "store", id, "error", err)
	}
	if err := s.keystores.Remove(id); err != nil {
		s.log.Warn("forgetting deleted key store", "store", id, "error", err)
	}
}

// reportedState is the state every node reports for ks (see the table
// above); live is this node's Store for it.
func (s *Service) reportedState(ctx context.Context, ks *store.KeyStore, live *keystore.Store) (keystore.ConnectionState, keystore.ErrorCode, error) {
	switch st := keystore.ConnectionState(ks.ConnectionState); st {
	case "", keystore.Disconnected:
		return keystore.Disconnected, "", nil
	case keystore.Connecting:
		return keystore.Connecting, "", nil
	case keystore.Failed:
		return keystore.Failed, keystore.ErrorCode(ks.ConnectionError), nil
	}
	local, code := live.State()
	if local == keystore.Connected {
		return keystore.Connected, "", nil
	}
	// While retrying, this node's last failure stands.
	var failed keystore.ErrorCode
	var failedAt time.Time
	if local == keystore.Failed {
		failed, failedAt = code, time.Now()
	} else if last := s.ks.lastFailure(ks.ID); last != "" && local == keystore.Connecting {
		failed, failedAt = last, time.Now()
	}
	if s.shared {
		logins, err := s.store.KeyStoreLogins(ctx, ks.ID)
		if err != nil {
			return "", "", err
		}
		for _, l := range logins {
			if l.Node == s.node || time.Since(l.Heartbeat) > s.staleAfter() {
				continue
			}
			switch keystore.ConnectionState(l.State) {
			case keystore.Connected:
				return keystore.Connected, "", nil
			case keystore.Failed:
				if failed == "" || l.Updated.After(failedAt) {
					failed, failedAt = keystore.ErrorCode(l.ErrorCode), l.Updated
				}
			}
		}
	}
	if failed != "" {
		return keystore.Failed, failed, nil
	}
	return keystore.Connecting, "", nil
}

// recordLogin records this node's login state for store id, if it changed.
func (s *Service) recordLogin(ctx context.Context, id string, live *keystore.Store) {
	st, code := live.State()
	if st == keystore.Connecting || st == keystore.Disconnecting {
		return // transient: the outcome is recorded
	}
	key := string(st) + "/" + string(code)
	s.ks.mu.Lock()
	same := s.ks.recorded[id] == key
	s.ks.mu.Unlock()
	if same {
		return
	}
	err := s.store.PutKeyStoreLogin(ctx, store.KeyStoreLogin{KeyStoreID: id, Node: s.node, State: string(st), ErrorCode: string(code), Updated: time.Now()})
	if err != nil {
		s.log.Warn("recording this node's login to a custom key store", "store", id, "error", err)
		return
	}
	s.ks.mu.Lock()
	if s.ks.recorded == nil {
		s.ks.recorded = map[string]string{}
	}
	s.ks.recorded[id] = key
	s.ks.mu.Unlock()
}

// connectStore is the connecting node's work: log in (resolving a rotation
// cut short), then, if rotate, let the other nodes log in and rotate the
// kmsuser password, and record the outcome as the store's state. The
// caller holds the store's connect mark, so the connect is one internal
// action in the audit trail, written by the node that performs it: a
// ConnectCustomKeyStore service event with the outcome. If its intent
// cannot be recorded, the store is left disconnected.
func (s *Service) connectStore(id string, live *keystore.Store, rotate bool) {
	ctx, cancel := context.WithTimeout(s.life, connectTimeout)
	defer cancel()
	account, region := "", ""
	if ks, err := s.store.GetKeyStore(ctx, id); err == nil {
		account, region = ks.Account, ks.Region
	}
	err := s.serviceAction(ctx, "ConnectCustomKeyStore", account, region, nil, func() (audit.Fields, audit.Fields, error) {
		code := s.connectStoreNow(ctx, id, live, rotate)
		st, _ := live.State()
		details := audit.Fields{{Name: "customKeyStoreId", Value: id}, {Name: "connectionState", Value: string(st)},
			{Name: "passwordRotated", Value: rotate && code == ""}}
		if code != "" {
			details.Add("connectionErrorCode", string(code))
		}
		return details, nil, nil
	})
	if err != nil {
		s.log.Error("custom key store not connected: its audit record could not be written", "store", id, "error", err)
		s.abandonConnect(ctx, id)
		if st, _ := live.State(); st == keystore.Connected || st == keystore.Failed {
			live.Disconnect(context.WithoutCancel(ctx))
		}
		s.recordLogin(ctx, id, live)
	}
	s.kickSync()
}

// abandonConnect leaves a store whose connect could not be recorded in the
// audit trail DISCONNECTED, unless its state changed meanwhile.
func (s *Service) abandonConnect(ctx context.Context, id string) {
	_, err := s.store.UpdateKeyStore(context.WithoutCancel(ctx), id, func(k *store.KeyStore) error {
		if k.ConnectionState != string(keystore.Connecting) {
			return errNotConnecting
		}
		k.Connect, k.ConnectionState, k.ConnectionError = false, string(keystore.Disconnected), ""
		return nil
	})
	if err != nil && !errors.Is(err, errNotConnecting) && !errors.Is(err, store.ErrNotFound) {
		s.log.Error("custom key store: recording it disconnected after its connect was not recorded", "store", id, "error", err)
	}
}

// connectStoreNow is connectStore's action; it returns the connection's
// error code ("" when connected).
func (s *Service) connectStoreNow(ctx context.Context, id string, live *keystore.Store, rotate bool) keystore.ErrorCode {
	code := s.loginAsOwner(ctx, id, live)
	if code == "" && rotate {
		s.waitForLogins(ctx, id)
		unlock, err := s.store.Lock(ctx, tokensLock)
		if err != nil {
			s.log.Error("custom key store: cannot take its lock to rotate the kmsuser password", "store", id, "error", err)
			code = keystore.InternalError
			live.Disconnect(ctx)
		} else {
			code = live.RotatePassword(ctx, storePasswords{s}, s.log)
			unlock()
		}
	}
	s.recordLogin(ctx, id, live)
	_, err := s.store.UpdateKeyStore(ctx, id, func(k *store.KeyStore) error {
		if k.ConnectionState != string(keystore.Connecting) {
			return errNotConnecting // disconnected meanwhile: that stands
		}
		k.ConnectionState, k.ConnectionError = string(keystore.Connected), ""
		if code != "" {
			k.ConnectionState, k.ConnectionError = string(keystore.Failed), string(code)
		}
		return nil
	})
	switch {
	case err == nil, errors.Is(err, errNotConnecting):
	case errors.Is(err, store.ErrNotFound):
	default:
		// Left CONNECTING: a node takes it over once the mark is released.
		s.log.Error("custom key store: recording the outcome of its connection", "store", id, "error", err)
	}
	return code
}

var errNotConnecting = errors.New("kms: the key store is no longer connecting")

// loginAsOwner logs this node in to the store as the node connecting it.
func (s *Service) loginAsOwner(ctx context.Context, id string, live *keystore.Store) keystore.ErrorCode {
	for {
		st, _ := live.State()
		switch st {
		case keystore.Connected:
			return ""
		case keystore.Failed:
			live.Disconnect(ctx)
		case keystore.Connecting, keystore.Disconnecting:
			// This node's sync is logging in or out: let it finish.
			select {
			case <-ctx.Done():
				return keystore.NetworkErrors
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		if started, _ := live.BeginConnect(); started {
			break
		}
	}
	unlock, err := s.store.Lock(ctx, tokensLock)
	if err != nil {
		s.log.Error("custom key store: cannot take its lock to log in", "store", id, "error", err)
		live.Disconnect(ctx)
		return keystore.InternalError
	}
	defer unlock()
	return live.Login(ctx, storePasswords{s}, s.log, true)
}

// waitForLogins waits, for at most 3 sync intervals, until every other
// live node has logged in to the store (or failed to).
func (s *Service) waitForLogins(ctx context.Context, id string) {
	if !s.shared {
		return
	}
	deadline := time.Now().Add(3 * s.syncInterval)
	for {
		waiting, err := s.nodesNotLoggedIn(ctx, id)
		if err != nil || len(waiting) == 0 {
			return
		}
		if time.Now().After(deadline) {
			s.log.Info("rotating the kmsuser password without waiting longer for nodes to log in first (they log in with the new one)",
				"store", id, "nodes", waiting)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// nodesNotLoggedIn lists the other live nodes that have neither logged in
// to the store nor failed to.
func (s *Service) nodesNotLoggedIn(ctx context.Context, id string) ([]string, error) {
	nodes, err := s.store.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	logins, err := s.store.KeyStoreLogins(ctx, id)
	if err != nil {
		return nil, err
	}
	done := map[string]bool{}
	for _, l := range logins {
		if st := keystore.ConnectionState(l.State); st == keystore.Connected || st == keystore.Failed {
			done[l.Node] = true
		}
	}
	var out []string
	for _, n := range nodes {
		if n.ID != s.node && !done[n.ID] && time.Since(n.Heartbeat) <= s.staleAfter() {
			out = append(out, n.ID)
		}
	}
	return out, nil
}

// syncKeyStores brings this node in line with every store's shared state.
func (s *Service) syncKeyStores(ctx context.Context) {
	all, err := s.store.AllKeyStores(ctx)
	if err != nil {
		s.log.Warn("custom key store sync: listing the stores", "error", err)
		return
	}
	known := map[string]bool{}
	for _, ks := range all {
		if ks.Type == storeTypeExternal {
			continue
		}
		known[ks.ID] = true
		s.syncKeyStore(ctx, ks, s.registered(ks))
	}
	for _, id := range s.keystores.CustomIDs() {
		if !known[id] {
			s.forget(ctx, id) // deleted on another node
		}
	}
}

func (s *Service) syncKeyStore(ctx context.Context, ks *store.KeyStore, live *keystore.Store) {
	defer s.recordLogin(ctx, ks.ID, live)
	state := keystore.ConnectionState(ks.ConnectionState)
	pending := len(ks.PendingPassword) > 0
	switch {
	case state == keystore.Connecting || (state == keystore.Connected && pending):
		// The connecting node's work: if it is gone, take it over (no
		// new rotation: the one it may have begun is resolved).
		if m, err := s.liveMark(ctx, connectMark(ks.ID)); err == nil && m == nil {
			if release, err := s.claim(ctx, connectMark(ks.ID), ""); err == nil {
				s.log.Warn("taking over the connection of a custom key store whose connecting node is gone", "store", ks.ID)
				s.goBackground(func() {
					defer release()
					s.connectStore(ks.ID, live, false)
				})
				return
			}
		}
		if state == keystore.Connecting && !pending {
			s.join(ctx, ks, live) // before the connecting node rotates
		}
	case state == keystore.Connected:
		s.join(ctx, ks, live)
		s.usePassword(ctx, ks, live)
	default: // DISCONNECTED or FAILED: nobody is logged in
		if st, _ := live.State(); st == keystore.Connected || st == keystore.Failed {
			if err := live.Disconnect(ctx); err != nil && !errors.Is(err, keystore.ErrInvalidState) {
				s.log.Warn("logging out of a disconnected custom key store", "store", ks.ID, "error", err)
			}
		}
		s.ks.setFailure(ks.ID, "")
	}
}

// join logs this node in to a store another node connected, with the
// current password, in the background; it writes no password.
func (s *Service) join(ctx context.Context, ks *store.KeyStore, live *keystore.Store) {
	st, code := live.State()
	switch st {
	case keystore.Connected, keystore.Connecting, keystore.Disconnecting:
		return
	case keystore.Failed:
		if code == keystore.InvalidCredentials && bytes.Equal(s.ks.get(&s.ks.refused, ks.ID), ks.Password) {
			return // never the same wrong password twice
		}
		s.ks.setFailure(ks.ID, code)
		live.Disconnect(ctx)
	}
	if started, _ := live.BeginConnect(); !started {
		return
	}
	password := ks.Password
	s.goBackground(func() {
		ctx, cancel := context.WithTimeout(s.life, connectTimeout)
		defer cancel()
		code := keystore.InternalError
		if unlock, err := s.store.Lock(ctx, tokensLock); err != nil {
			s.log.Warn("custom key store: cannot take its lock to log in; retrying", "store", ks.ID, "error", err)
			live.Disconnect(ctx)
		} else {
			code = live.Login(ctx, storePasswords{s}, s.log, false)
			unlock()
		}
		switch code {
		case "":
			s.ks.setFailure(ks.ID, "")
			s.ks.set(&s.ks.password, ks.ID, password)
		case keystore.InvalidCredentials:
			s.ks.set(&s.ks.refused, ks.ID, password)
		}
		s.recordLogin(ctx, ks.ID, live)
	})
}

// usePassword gives the store's token the password another node's
// rotation recorded, for when it must log in again.
func (s *Service) usePassword(ctx context.Context, ks *store.KeyStore, live *keystore.Store) {
	if st, _ := live.State(); st != keystore.Connected || bytes.Equal(s.ks.get(&s.ks.password, ks.ID), ks.Password) {
		return
	}
	pw, err := s.openPassword(ctx, ks.ID, ks.Password)
	if err != nil {
		s.log.Warn("custom key store: opening its new password", "store", ks.ID, "error", err)
		return
	}
	live.UsePassword(pw)
	s.ks.set(&s.ks.password, ks.ID, ks.Password)
}

// CustomKeyStoresReady reports whether this node is logged in to every
// custom key store that is connected (for /readyz, should it care): nil,
// or the stores it cannot use now. A node not logged in to a store still
// serves everything else, and answers KMSInvalidStateException for that
// store's keys.
func (s *Service) CustomKeyStoresReady(ctx context.Context) error {
	all, err := s.store.AllKeyStores(ctx)
	if err != nil {
		return err
	}
	var out []string
	for _, ks := range all {
		if ks.Type == storeTypeExternal || keystore.ConnectionState(ks.ConnectionState) != keystore.Connected {
			continue
		}
		if st, code := s.registered(ks).State(); st != keystore.Connected {
			out = append(out, ks.ID+" ("+string(st)+" "+string(code)+")")
		}
	}
	if len(out) > 0 {
		return &KeyStoresNotReady{Stores: out}
	}
	return nil
}

// KeyStoresNotReady lists the connected custom key stores this node is not
// logged in to.
type KeyStoresNotReady struct{ Stores []string }

func (e *KeyStoresNotReady) Error() string {
	msg := "not logged in to connected custom key stores:"
	for _, s := range e.Stores {
		msg += " " + s
	}
	return msg
}
