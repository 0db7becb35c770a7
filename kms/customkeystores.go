package kms

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/audit"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// Custom key stores map AWS's CloudHSM key stores onto PKCS#11 tokens: the
// cluster is a token declared in the configuration, kmsuser is the token's
// user and KeyStorePassword its PIN, which connecting rotates.

const (
	maxKeyStoresPerRegion = 10
	storeTypeCloudHSM     = "AWS_CLOUDHSM"
	originCloudHSM        = "AWS_CLOUDHSM"
	connectTimeout        = 60 * time.Second
)

func keyStoreNotFound(id string) error {
	return wire.Errorf(wire.CustomKeyStoreNotFound, "Custom key store '%s' does not exist.", id)
}

func keyStoreInvalidState(id string, st keystore.ConnectionState, want string) error {
	return wire.Errorf(wire.CustomKeyStoreInvalidState, "Custom key store %s is %s; the operation requires it to be %s.", id, st, want)
}

// keyStore returns a store of the caller's account and region, and for a
// CloudHSM key store its token's connection (nil for an external key
// store, whose connection is in xksStores).
func (s *Service) keyStore(ctx context.Context, r *Request, id string) (*store.KeyStore, *keystore.Store, error) {
	ks, err := s.store.GetKeyStore(ctx, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && (ks.Account != r.Caller.Account || ks.Region != r.Caller.Region)) {
		return nil, nil, keyStoreNotFound(id)
	}
	if err != nil {
		return nil, nil, err
	}
	if ks.Type == storeTypeExternal {
		return ks, nil, nil
	}
	live, err := s.keystores.Get(id)
	if err != nil {
		return nil, nil, err
	}
	return ks, live, nil
}

func (s *Service) cluster(id string) (keystore.Cluster, error) {
	cl, ok := s.clusters[id]
	if !ok {
		return keystore.Cluster{}, wire.Errorf(wire.CloudHsmClusterNotFound, "AWS KMS cannot find the AWS CloudHSM cluster with the specified cluster ID %s.", id)
	}
	return cl, nil
}

func probeError(clusterID string, err error) error {
	var pe *keystore.ProbeError
	if errors.As(err, &pe) && pe.WrongDevice {
		return wire.Errorf(wire.CloudHsmClusterInvalidConfig, "The token of cluster %s is not the device declared for it.", clusterID)
	}
	return wire.Errorf(wire.CloudHsmClusterNotActive, "The cluster %s is not active: its token is not present.", clusterID)
}

type CreateCustomKeyStoreInput struct {
	CustomKeyStoreName               string
	CloudHsmClusterId                string
	TrustAnchorCertificate           string
	KeyStorePassword                 string
	CustomKeyStoreType               string
	XksProxyUriEndpoint              string
	XksProxyUriPath                  string
	XksProxyVpcEndpointServiceName   string
	XksProxyVpcEndpointServiceOwner  string
	XksProxyAuthenticationCredential *XksProxyAuthenticationCredential
	XksProxyConnectivity             string
}

type CreateCustomKeyStoreOutput struct {
	CustomKeyStoreId string
}

func (s *Service) CreateCustomKeyStore(ctx context.Context, r *Request, in *CreateCustomKeyStoreInput) (*CreateCustomKeyStoreOutput, error) {
	if in.CustomKeyStoreType == storeTypeExternal {
		return s.createXKS(ctx, r, in)
	}
	for _, p := range []struct {
		name string
		set  bool
	}{{"XksProxyUriEndpoint", in.XksProxyUriEndpoint != ""}, {"XksProxyUriPath", in.XksProxyUriPath != ""},
		{"XksProxyVpcEndpointServiceName", in.XksProxyVpcEndpointServiceName != ""}, {"XksProxyVpcEndpointServiceOwner", in.XksProxyVpcEndpointServiceOwner != ""},
		{"XksProxyAuthenticationCredential", in.XksProxyAuthenticationCredential != nil}, {"XksProxyConnectivity", in.XksProxyConnectivity != ""}} {
		if p.set {
			return nil, wire.Errorf(wire.Validation, "%s is valid only for an EXTERNAL_KEY_STORE custom key store.", p.name)
		}
	}
	for _, p := range []struct{ name, v string }{
		{"CloudHsmClusterId", in.CloudHsmClusterId}, {"TrustAnchorCertificate", in.TrustAnchorCertificate}, {"KeyStorePassword", in.KeyStorePassword},
	} {
		if p.v == "" {
			return nil, wire.Errorf(wire.Validation, "%s is required for an AWS_CLOUDHSM custom key store.", p.name)
		}
	}
	cl, err := s.cluster(in.CloudHsmClusterId)
	if err != nil {
		return nil, err
	}
	if block, _ := pem.Decode([]byte(in.TrustAnchorCertificate)); block == nil || block.Type != "CERTIFICATE" {
		return nil, wire.Errorf(wire.IncorrectTrustAnchor, "The trust anchor certificate is not a PEM-encoded X.509 certificate.")
	} else if _, err := x509.ParseCertificate(block.Bytes); err != nil {
		return nil, wire.Errorf(wire.IncorrectTrustAnchor, "The trust anchor certificate is not a valid X.509 certificate.")
	}
	// The cluster, the name and the quota are checked by CreateKeyStore
	// below, in the transaction that inserts the store.
	//
	// The password is not tried here, as in AWS: a wrong one shows up at
	// connect as INVALID_CREDENTIALS.
	if _, err := keystore.Probe(cl); err != nil {
		return nil, probeError(cl.ID, err)
	}
	id := newKeyStoreID()
	enc, err := s.sealPassword(ctx, id, in.KeyStorePassword)
	if err != nil {
		return nil, tokenError(err, tokenCall{})
	}
	err = s.store.CreateKeyStore(ctx, &store.KeyStore{
		ID: id, Account: r.Caller.Account, Region: r.Caller.Region, Name: in.CustomKeyStoreName, Type: storeTypeCloudHSM,
		ClusterID: cl.ID, TrustAnchor: in.TrustAnchorCertificate, CreationDate: s.now().UTC(), Password: enc,
	}, maxKeyStoresPerRegion)
	switch {
	case errors.Is(err, store.ErrClusterInUse):
		return nil, clusterInUse(cl.ID)
	case errors.Is(err, store.ErrKeyStoreNameInUse):
		return nil, keyStoreNameInUse(in.CustomKeyStoreName)
	case errors.Is(err, store.ErrLimitExceeded):
		return nil, wire.Errorf(wire.LimitExceeded, "Cannot exceed quota for CustomKeyStoresPerAccount: %d", maxKeyStoresPerRegion)
	case err != nil:
		return nil, err
	}
	s.keystores.AddCustom(id, cl)
	return &CreateCustomKeyStoreOutput{CustomKeyStoreId: id}, nil
}

func clusterInUse(id string) error {
	return wire.Errorf(wire.CloudHsmClusterInUse, "The cluster %s is already associated with a custom key store.", id)
}

func keyStoreNameInUse(name string) error {
	return wire.Errorf(wire.CustomKeyStoreNameInUse, "A custom key store named %s already exists in this account and Region.", name)
}

func newKeyStoreID() string {
	b := make([]byte, 9)
	rand.Read(b)
	return "cks-" + hex.EncodeToString(b)[:17]
}

type CustomKeyStoreEntry struct {
	CustomKeyStoreId       string
	CustomKeyStoreName     string
	CloudHsmClusterId      string `json:",omitempty"`
	TrustAnchorCertificate string `json:",omitempty"`
	ConnectionState        string
	ConnectionErrorCode    string `json:",omitempty"`
	CreationDate           wire.Time
	CustomKeyStoreType     string
	XksProxyConfiguration  *XksProxyConfiguration `json:",omitempty"`
}

type DescribeCustomKeyStoresInput struct {
	CustomKeyStoreId   string
	CustomKeyStoreName string
	Limit              int
	Marker             string
}

type DescribeCustomKeyStoresOutput struct {
	CustomKeyStores []CustomKeyStoreEntry
	NextMarker      string `json:",omitempty"`
	Truncated       bool
}

func (s *Service) DescribeCustomKeyStores(ctx context.Context, r *Request, in *DescribeCustomKeyStoresInput) (*DescribeCustomKeyStoresOutput, error) {
	if in.CustomKeyStoreId != "" && in.CustomKeyStoreName != "" {
		return nil, wire.Errorf(wire.Validation, "You cannot specify both CustomKeyStoreId and CustomKeyStoreName.")
	}
	all, err := s.store.ListKeyStores(ctx, r.Caller.Account, r.Caller.Region)
	if err != nil {
		return nil, err
	}
	var list []*store.KeyStore
	for _, ks := range all {
		if (in.CustomKeyStoreId == "" || ks.ID == in.CustomKeyStoreId) && (in.CustomKeyStoreName == "" || ks.Name == in.CustomKeyStoreName) {
			list = append(list, ks)
		}
	}
	if len(list) == 0 && in.CustomKeyStoreId != "" {
		return nil, keyStoreNotFound(in.CustomKeyStoreId)
	}
	if len(list) == 0 && in.CustomKeyStoreName != "" {
		return nil, wire.Errorf(wire.CustomKeyStoreNotFound, "Custom key store with name %s does not exist.", in.CustomKeyStoreName)
	}
	// At most ten stores per account and Region: page in memory, the
	// marker being the index of the next entry.
	start := 0
	if in.Marker != "" {
		if _, err := fmt.Sscanf(in.Marker, "cks-page-%d", &start); err != nil || start < 0 || start > len(list) {
			return nil, wire.Errorf(wire.InvalidMarker, "Invalid marker %s", in.Marker)
		}
	}
	end := min(len(list), start+limit(in.Limit, 1000))
	out := &DescribeCustomKeyStoresOutput{CustomKeyStores: []CustomKeyStoreEntry{}}
	for _, ks := range list[start:end] {
		if ks.Type == storeTypeExternal {
			out.CustomKeyStores = append(out.CustomKeyStores, s.xksEntry(ks))
			continue
		}
		e := CustomKeyStoreEntry{
			CustomKeyStoreId: ks.ID, CustomKeyStoreName: ks.Name, CloudHsmClusterId: ks.ClusterID,
			TrustAnchorCertificate: ks.TrustAnchor, CreationDate: wire.Time(ks.CreationDate), CustomKeyStoreType: storeTypeCloudHSM,
			ConnectionState: string(keystore.Disconnected),
		}
		if live, err := s.keystores.Get(ks.ID); err == nil {
			st, code := live.State()
			e.ConnectionState = string(st)
			if st == keystore.Failed {
				e.ConnectionErrorCode = string(code)
			}
		}
		out.CustomKeyStores = append(out.CustomKeyStores, e)
	}
	if end < len(list) {
		out.Truncated, out.NextMarker = true, fmt.Sprintf("cks-page-%d", end)
	}
	return out, nil
}

type CustomKeyStoreIDInput struct {
	CustomKeyStoreId string
}

// ConnectCustomKeyStore answers at once and connects in the background:
// DISCONNECTED → CONNECTING → CONNECTED or FAILED.
func (s *Service) ConnectCustomKeyStore(ctx context.Context, r *Request, in *CustomKeyStoreIDInput) (*Empty, error) {
	ks, live, err := s.keyStore(ctx, r, in.CustomKeyStoreId)
	if err != nil {
		return nil, err
	}
	if live == nil {
		return s.connectXKS(ctx, r, ks)
	}
	// The token is not probed here: whatever stops the connection is
	// reported as the store's ConnectionErrorCode, as AWS does.
	st, _ := live.State()
	started, err := live.BeginConnect()
	if errors.Is(err, keystore.ErrInvalidState) {
		return nil, keyStoreInvalidState(ks.ID, st, "DISCONNECTED")
	}
	if err != nil || !started {
		return &Empty{}, err
	}
	if _, err := s.store.UpdateKeyStore(ctx, ks.ID, func(k *store.KeyStore) error { k.Connect = true; return nil }); err != nil {
		live.Disconnect(ctx)
		return nil, err
	}
	s.connectInBackground(live, true)
	return &Empty{}, nil
}

// connectInBackground connects live, rotating its password if rotate (a
// user's ConnectCustomKeyStore), else logging in with the current one (a
// store reconnected at start). The connect is an internal action in the
// audit trail (a ConnectCustomKeyStore service event with the outcome);
// if its intent cannot be recorded, the store is left disconnected.
func (s *Service) connectInBackground(live *keystore.Store, rotate bool) {
	s.goBackground(func() {
		ctx, cancel := context.WithTimeout(s.life, connectTimeout)
		defer cancel()
		account, region := "", ""
		if ks, err := s.store.GetKeyStore(ctx, live.ID()); err == nil {
			account, region = ks.Account, ks.Region
		}
		err := s.serviceAction(ctx, "ConnectCustomKeyStore", account, region, nil, func() (audit.Fields, audit.Fields, error) {
			var code keystore.ErrorCode
			if rotate {
				code = live.Connect(ctx, storePasswords{s}, s.log)
			} else {
				code = live.Reconnect(ctx, storePasswords{s}, s.log)
			}
			st, _ := live.State()
			details := audit.Fields{{Name: "customKeyStoreId", Value: live.ID()}, {Name: "connectionState", Value: string(st)},
				{Name: "passwordRotated", Value: rotate}}
			if code != "" {
				details.Add("connectionErrorCode", string(code))
			}
			return details, nil, nil
		})
		if err != nil {
			s.log.Error("custom key store not connected: its audit record could not be written", "store", live.ID(), "error", err)
			live.Disconnect(context.WithoutCancel(ctx))
		}
	})
}

func (s *Service) DisconnectCustomKeyStore(ctx context.Context, r *Request, in *CustomKeyStoreIDInput) (*Empty, error) {
	ks, live, err := s.keyStore(ctx, r, in.CustomKeyStoreId)
	if err != nil {
		return nil, err
	}
	if live == nil {
		return s.disconnectXKS(ctx, r, ks)
	}
	st, _ := live.State()
	if st == keystore.Disconnected || st == keystore.Disconnecting {
		return nil, keyStoreInvalidState(ks.ID, st, "CONNECTED, CONNECTING or FAILED")
	}
	if _, err := s.store.UpdateKeyStore(ctx, ks.ID, func(k *store.KeyStore) error { k.Connect = false; return nil }); err != nil {
		return nil, err
	}
	if err := live.Disconnect(ctx); err != nil && !errors.Is(err, keystore.ErrInvalidState) {
		s.log.Warn("disconnecting custom key store", "store", ks.ID, "error", err)
	}
	return &Empty{}, nil
}

type UpdateCustomKeyStoreInput struct {
	CustomKeyStoreId                 string
	NewCustomKeyStoreName            string
	KeyStorePassword                 string
	CloudHsmClusterId                string
	XksProxyUriEndpoint              string
	XksProxyUriPath                  string
	XksProxyVpcEndpointServiceName   string
	XksProxyVpcEndpointServiceOwner  string
	XksProxyAuthenticationCredential *XksProxyAuthenticationCredential
	XksProxyConnectivity             string
}

func (s *Service) UpdateCustomKeyStore(ctx context.Context, r *Request, in *UpdateCustomKeyStoreInput) (*Empty, error) {
	ks, live, err := s.keyStore(ctx, r, in.CustomKeyStoreId)
	if err != nil {
		return nil, err
	}
	if live == nil {
		return s.updateXKS(ctx, r, ks, in)
	}
	for _, p := range []struct {
		name string
		set  bool
	}{{"XksProxyUriEndpoint", in.XksProxyUriEndpoint != ""}, {"XksProxyUriPath", in.XksProxyUriPath != ""},
		{"XksProxyVpcEndpointServiceName", in.XksProxyVpcEndpointServiceName != ""}, {"XksProxyVpcEndpointServiceOwner", in.XksProxyVpcEndpointServiceOwner != ""},
		{"XksProxyAuthenticationCredential", in.XksProxyAuthenticationCredential != nil}, {"XksProxyConnectivity", in.XksProxyConnectivity != ""}} {
		if p.set {
			return nil, wire.Errorf(wire.Validation, "%s is valid only for an EXTERNAL_KEY_STORE custom key store.", p.name)
		}
	}
	st, _ := live.State()
	if (in.KeyStorePassword != "" || in.CloudHsmClusterId != "") && st != keystore.Disconnected {
		return nil, keyStoreInvalidState(ks.ID, st, "DISCONNECTED to change its password or cluster")
	}
	var newCluster keystore.Cluster
	if in.CloudHsmClusterId != "" && in.CloudHsmClusterId != ks.ClusterID {
		if newCluster, err = s.cluster(in.CloudHsmClusterId); err != nil {
			return nil, err
		}
		if _, err := keystore.Probe(newCluster); err != nil {
			return nil, probeError(newCluster.ID, err)
		}
		password := in.KeyStorePassword
		if password == "" {
			if password, err = s.openPassword(ctx, ks.ID, ks.Password); err != nil {
				return nil, tokenError(err, tokenCall{})
			}
		}
		if err := s.checkRelated(ctx, ks, newCluster, password); err != nil {
			return nil, err
		}
	}
	var enc []byte
	if in.KeyStorePassword != "" {
		if enc, err = s.sealPassword(ctx, ks.ID, in.KeyStorePassword); err != nil {
			return nil, tokenError(err, tokenCall{})
		}
	}
	_, err = s.store.UpdateKeyStore(ctx, ks.ID, func(k *store.KeyStore) error {
		if in.NewCustomKeyStoreName != "" {
			k.Name = in.NewCustomKeyStoreName
		}
		if enc != nil {
			k.Password, k.PendingPassword = enc, nil
		}
		if newCluster.ID != "" {
			k.ClusterID = newCluster.ID
		}
		return nil
	})
	switch {
	case errors.Is(err, store.ErrClusterInUse):
		return nil, clusterInUse(newCluster.ID)
	case errors.Is(err, store.ErrKeyStoreNameInUse):
		return nil, keyStoreNameInUse(in.NewCustomKeyStoreName)
	case err != nil:
		return nil, err
	}
	if newCluster.ID != "" {
		if err := live.SetCluster(newCluster); err != nil {
			return nil, keyStoreInvalidState(ks.ID, st, "DISCONNECTED")
		}
	}
	return &Empty{}, nil
}

// checkRelated is AWS's rule that a replacement cluster must hold the same
// key store: every material version of the store's keys must be on the new
// token, logged in with the store's password (keystore.Manager.CheckRelated).
func (s *Service) checkRelated(ctx context.Context, ks *store.KeyStore, cl keystore.Cluster, password string) error {
	var ms []keystore.Material
	err := s.store.ForEachKey(ctx, func(k *store.Key) error {
		if k.CustomKeyStoreID == ks.ID {
			for _, m := range k.Materials {
				ms = append(ms, material(k, m))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	err = s.keystores.CheckRelated(ctx, cl, password, ms)
	if errors.Is(err, keystore.ErrNotRelated) {
		return wire.Errorf(wire.CloudHsmClusterNotRelated, "The cluster %s is not related to the cluster of custom key store %s: it does not hold the store's keys.", cl.ID, ks.ID)
	}
	if err != nil {
		return probeError(cl.ID, err)
	}
	return nil
}

func (s *Service) DeleteCustomKeyStore(ctx context.Context, r *Request, in *CustomKeyStoreIDInput) (*Empty, error) {
	ks, live, err := s.keyStore(ctx, r, in.CustomKeyStoreId)
	if err != nil {
		return nil, err
	}
	var st keystore.ConnectionState
	if live != nil {
		st, _ = live.State()
	} else {
		st, _ = s.xksStore(ks.ID).state()
	}
	if st != keystore.Disconnected {
		return nil, keyStoreInvalidState(ks.ID, st, "DISCONNECTED")
	}
	// The store counts the keys in the transaction that deletes it, and
	// CreateKey checks the store exists in the one that adds a key.
	var notEmpty *store.KeyStoreNotEmptyError
	switch err := s.store.DeleteKeyStore(ctx, ks.ID); {
	case errors.As(err, &notEmpty):
		return nil, wire.Errorf(wire.CustomKeyStoreHasCMKs, "Custom key store %s contains %d KMS keys; delete them before deleting the store.", ks.ID, notEmpty.Keys)
	case errors.Is(err, store.ErrNotFound): // deleted since the lookup
		return nil, keyStoreNotFound(ks.ID)
	case err != nil:
		return nil, err
	}
	if live == nil {
		s.xksStores.Delete(ks.ID)
		return &Empty{}, nil
	}
	if err := s.keystores.Remove(ks.ID); err != nil {
		s.log.Warn("forgetting deleted key store", "store", ks.ID, "error", err)
	}
	return &Empty{}, nil
}

// registerKeyStores registers every custom key store, DISCONNECTED, and
// remembers those that were connected when the service last stopped.
func (s *Service) registerKeyStores(ctx context.Context) error {
	all, err := s.store.AllKeyStores(ctx)
	if err != nil {
		return err
	}
	for _, ks := range all {
		if ks.Type == storeTypeExternal {
			s.xksStore(ks.ID)
			if ks.Connect {
				s.reconnectXKSStores = append(s.reconnectXKSStores, ks.ID)
			}
			continue
		}
		cl, ok := s.clusters[ks.ClusterID]
		if !ok {
			// Connecting will report CLUSTER_NOT_FOUND.
			cl = keystore.Cluster{ID: ks.ClusterID, Token: keystore.TokenConfig{Module: "/nonexistent-cluster/" + ks.ClusterID, Label: ks.ClusterID}}
			s.log.Warn("custom key store's cluster is no longer declared", "store", ks.ID, "cluster", ks.ClusterID)
		}
		live := s.keystores.AddCustom(ks.ID, cl)
		if ks.Connect {
			s.reconnect = append(s.reconnect, live)
		}
	}
	return nil
}

// reconnectKeyStores connects, in the background, the stores that were
// connected when the service last stopped. It does not rotate their
// passwords: as in AWS, only a user's ConnectCustomKeyStore does, and each
// rotation is a write to the token that a crash could cut short.
func (s *Service) reconnectKeyStores() {
	for _, live := range s.reconnect {
		if started, _ := live.BeginConnect(); started {
			s.connectInBackground(live, false)
		}
	}
	s.reconnect = nil
	for _, id := range s.reconnectXKSStores {
		s.reconnectXKS(id)
	}
	s.reconnectXKSStores = nil
}

// The kmsuser password is sealed by keystore's vault (on the default token,
// bound to the key store id) before it reaches the metadata. Errors keep
// the token's: on a request's path they go through tokenError, during a
// connect keystore.Classify turns them into a ConnectionErrorCode.

func (s *Service) sealPassword(ctx context.Context, storeID, password string) ([]byte, error) {
	return s.keystores.SealPassword(ctx, storeID, password)
}

func (s *Service) openPassword(ctx context.Context, storeID string, enc []byte) (string, error) {
	pw, err := s.keystores.OpenPassword(ctx, storeID, enc)
	if err != nil {
		return "", internalf("key store %s: opening the stored password: %w", storeID, err)
	}
	return pw, nil
}

// storePasswords is keystore.Passwords on the metadata store.
type storePasswords struct{ s *Service }

func (p storePasswords) Password(ctx context.Context, id string) (string, string, error) {
	ks, err := p.s.store.GetKeyStore(ctx, id)
	if err != nil {
		return "", "", err
	}
	cur, err := p.s.openPassword(ctx, id, ks.Password)
	if err != nil {
		return "", "", err
	}
	pending, err := p.s.openPassword(ctx, id, ks.PendingPassword)
	return cur, pending, err
}

func (p storePasswords) SetPending(ctx context.Context, id, pending string) error {
	enc, err := p.s.sealPassword(ctx, id, pending)
	if err != nil {
		return err
	}
	_, err = p.s.store.UpdateKeyStore(ctx, id, func(k *store.KeyStore) error { k.PendingPassword = enc; return nil })
	return err
}

func (p storePasswords) CommitPending(ctx context.Context, id string) error {
	_, err := p.s.store.UpdateKeyStore(ctx, id, func(k *store.KeyStore) error {
		if len(k.PendingPassword) > 0 {
			k.Password, k.PendingPassword = k.PendingPassword, nil
		}
		return nil
	})
	return err
}

// Orphans lists token objects left on a cluster by keys deleted while
// their store was disconnected, for an operator to destroy.
func (s *Service) Orphans(ctx context.Context) ([]store.Orphan, error) { return s.store.Orphans(ctx) }
