package kms

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/audit"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
	"github.com/hsmkms/hsmkms/xks"
)

// External key stores: AWS's EXTERNAL_KEY_STORE custom key stores, whose
// keys are used through an XKS proxy (any proxy of the specification,
// hsmkms's own included). The store's record holds the proxy's endpoint,
// path and access key id, and its secret access key sealed by the
// keystore vault. Its connection state is in the record too, shared by
// every node (as a CloudHSM store's, keystoresync.go): a store is
// CONNECTED once a GetHealthStatus of its proxy succeeded, through
// whichever node took ConnectCustomKeyStore. Each node holds, in memory,
// a client of the proxy of every CONNECTED store, made from the record
// and made again when the record's proxy settings change
// (syncXKSStores: at once when the change feed says so, and every sync
// interval). Keys of the
// store carry key material of hsmkms's own on the default token as well
// as their external key (double encryption, xkscrypto.go).
//
// Every failure of a proxy is answered with what AWS KMS answers for it;
// the exceptions and messages are the XKS proxy specification's ("Error
// codes", KMS considerations), the ConnectionErrorCode values the KMS API
// reference's (CustomKeyStoresListEntry).

const (
	storeTypeExternal     = store.StoreTypeExternal
	originXKS             = "EXTERNAL_KEY_STORE"
	connectivityPublic    = "PUBLIC_ENDPOINT"
	connectivityVPC       = "VPC_ENDPOINT_SERVICE"
	xksHealthCheckTimeout = 30 * time.Second
)

// XKSConfig is how hsmkms reaches the proxies of its external key stores.
type XKSConfig struct {
	// RootCAs are the CAs a proxy's TLS certificate must chain to; nil
	// trusts none, so no external key store can connect
	// (XKS_PROXY_INVALID_TLS_CONFIGURATION).
	RootCAs *x509.CertPool
	// ConnectTo maps an XksProxyUriEndpoint host to the HOST:PORT to dial
	// instead of HOST:443 (AWS always dials 443, and the endpoint's
	// pattern has no port).
	ConnectTo map[string]string
	// Timeout bounds each call to a proxy; 0 is AWS's 250 ms.
	Timeout time.Duration
}

// The ConnectionErrorCode values of external key stores.
const (
	xksInvalidCredentials   keystore.ErrorCode = "INVALID_CREDENTIALS"
	xksAccessDenied         keystore.ErrorCode = "XKS_PROXY_ACCESS_DENIED"
	xksInvalidConfiguration keystore.ErrorCode = "XKS_PROXY_INVALID_CONFIGURATION"
	xksInvalidResponse      keystore.ErrorCode = "XKS_PROXY_INVALID_RESPONSE"
	xksInvalidTLS           keystore.ErrorCode = "XKS_PROXY_INVALID_TLS_CONFIGURATION"
	xksNotReachable         keystore.ErrorCode = "XKS_PROXY_NOT_REACHABLE"
	xksTimedOut             keystore.ErrorCode = "XKS_PROXY_TIMED_OUT"
	xksInternalError        keystore.ErrorCode = "INTERNAL_ERROR"
)

// The messages AWS KMS gives for each failure of a proxy (specification,
// "Error codes", KMS considerations).
const (
	msgXksInvalidResponse   = "AWS KMS cannot interpret the response from the external key store proxy. If you see this error repeatedly, report it to your external key store proxy administrator."
	msgXksKeyNotEnabled     = "The external key associated with this KMS key in an external key store is not enabled in the external key manager. Enable the external key in the external key manager and retry the request."
	msgXksInvalidCiphertext = "The external key store proxy rejected the request because the specified ciphertext or encryption context is corrupted, missing, or otherwise invalid."
	msgXksBadPlaintext      = "The ciphertext that the external key store proxy submitted for decryption, or the encryption context, is corrupted, missing, or otherwise invalid."
	msgXksKeyUsage          = "The external key associated with this KMS key in an external key store does not support the requested operation. Enable the operation on the key in your external key manager, and try the request again."
	msgXksAuthentication    = "The external key store proxy rejected the request because it could not authenticate AWS KMS. Verify the XKS proxy authentication credentials for your external key store and update if necessary."
	msgXksAccessDenied      = "The external key store proxy denied access to the operation. Verify that the user and the external key are both authorized for this operation, and try the request again."
	msgXksKeyNotFound       = "The external key associated with this KMS key in an external key store was not found in its external key manager. If the external key ID associated with this KMS key is incorrect, create a new KMS key with the correct external key ID."
	msgXksURIPath           = "The external key store proxy rejected the request because of an invalid URI path. Verify the URI path for your external key store and update if necessary."
	msgXksUnsupported       = "The external key store proxy rejected the request because it does not support the requested operation. If you see this error repeatedly, report it to your external key store proxy administrator."
	msgXksDependencyTimeout = "The external key store proxy did not respond to the request in the time allotted. Retry the request. If you see this error repeatedly, report it to your external key store proxy administrator."
	msgXksThrottling        = "The external key store proxy rejected the request due to a very high request rate. Reduce the frequency of your calls using KMS keys in this external key store."
	msgXksInternal          = "The external key store proxy rejected the request because it cannot communicate with the external key manager. Verify that the external key store proxy configuration is correct and that the external key manager is available."
	msgXksNoTCP             = "AWS KMS cannot communicate with the external key store proxy. This might be a transient network issue. If you see this error repeatedly, verify that your external key store proxy is active and is connected to the network, and that its endpoint URI is correct in your external keystore."
	msgXksNoTLS             = "AWS KMS cannot establish a TLS connection to the external key store proxy. Verify the TLS configuration, including its certificate."
	msgXksTimeout           = "AWS KMS rejected the request because the external key store proxy did not respond in time. Retry the request. If you see this error repeatedly, report it to your external key store proxy administrator."
	msgXksNotConnected      = "This KMS key is in a custom key store that is not connected to its external key store proxy. Connect the external key store and try the request again."
	// msgXksAllUnavailable is hsmkms's: the specification names the case
	// (GetHealthStatus reports every external key manager UNAVAILABLE)
	// under XksProxyUriUnreachableException without a message.
	msgXksAllUnavailable = "The external key store proxy reports that all of its external key managers are unavailable. Verify that your external key manager instances are operating properly."
)

// proxyFailure is what went wrong calling a proxy, in the terms of the
// specification's table: the proxy's errorName, or a failure of the call.
type proxyFailure struct {
	name    string      // the proxy's errorName, for xks.FailProxy
	failure xks.Failure // how the call failed
	down    bool        // GetHealthStatus said every key manager is UNAVAILABLE
	err     error       // for the log
}

func failureOf(err error) proxyFailure {
	var ce *xks.CallError
	if errors.As(err, &ce) {
		return proxyFailure{name: ce.ErrorName, failure: ce.Failure, err: err}
	}
	return proxyFailure{err: err}
}

// message is the specification's message for the failure.
func (f proxyFailure) message() string {
	if f.down {
		return msgXksAllUnavailable
	}
	switch f.failure {
	case xks.FailUnreachable:
		return msgXksNoTCP
	case xks.FailTLS:
		return msgXksNoTLS
	case xks.FailTimeout:
		return msgXksTimeout
	case xks.FailInvalidResponse:
		return msgXksInvalidResponse
	case xks.FailProxy:
		switch f.name {
		case xks.ValidationException:
			return msgXksInvalidResponse
		case xks.InvalidStateException:
			return msgXksKeyNotEnabled
		case xks.InvalidCiphertextException:
			return msgXksInvalidCiphertext
		case xks.InvalidKeyUsageException:
			return msgXksKeyUsage
		case xks.AuthenticationFailedException:
			return msgXksAuthentication
		case xks.AccessDeniedException:
			return msgXksAccessDenied
		case xks.KeyNotFoundException:
			return msgXksKeyNotFound
		case xks.InvalidUriPathException:
			return msgXksURIPath
		case xks.UnsupportedOperationException:
			return msgXksUnsupported
		case xks.DependencyTimeoutException:
			return msgXksDependencyTimeout
		case xks.ThrottlingException:
			return msgXksThrottling
		case xks.InternalException:
			return msgXksInternal
		}
	}
	return msgXksInvalidResponse
}

// storeAdminError is the answer of Create- and UpdateCustomKeyStore to a
// proxy that failed the health check of the new settings.
func (f proxyFailure) storeAdminError() error {
	typ := wire.XksProxyInvalidResponse
	switch {
	case f.down:
		typ = wire.XksProxyURIUnreachable
	case f.failure == xks.FailUnreachable, f.failure == xks.FailTLS, f.failure == xks.FailTimeout:
		typ = wire.XksProxyURIUnreachable
	case f.failure == xks.FailProxy:
		switch f.name {
		case xks.AuthenticationFailedException:
			typ = wire.XksProxyIncorrectAuthentication
		case xks.InvalidUriPathException, xks.InvalidStateException:
			typ = wire.XksProxyInvalidConfiguration
		case xks.DependencyTimeoutException, xks.ThrottlingException:
			typ = wire.XksProxyURIUnreachable
		}
	case f.failure == 0:
		return internalf("external key store health check: %w", f.err)
	}
	return wire.Errorf(typ, "%s", f.message())
}

// connectionCode is the ConnectionErrorCode of a failed connect.
func (f proxyFailure) connectionCode() keystore.ErrorCode {
	switch {
	case f.down:
		return xksNotReachable
	case f.failure == xks.FailUnreachable:
		return xksNotReachable
	case f.failure == xks.FailTLS:
		return xksInvalidTLS
	case f.failure == xks.FailTimeout:
		return xksTimedOut
	case f.failure == xks.FailInvalidResponse:
		return xksInvalidResponse
	case f.failure == xks.FailProxy:
		switch f.name {
		case xks.AuthenticationFailedException:
			return xksInvalidCredentials
		case xks.AccessDeniedException:
			return xksAccessDenied
		case xks.InvalidUriPathException, xks.InvalidStateException:
			return xksInvalidConfiguration
		case xks.DependencyTimeoutException:
			return xksTimedOut
		case xks.ThrottlingException:
			return xksNotReachable
		}
		return xksInvalidResponse
	}
	return xksInternalError
}

// keyError is the answer of an operation on a key of the store to a
// failure of its proxy: CreateKey's (createKey) or a cryptographic
// operation's (KMSInvalidStateException with the failure's message).
func (f proxyFailure) keyError(createKey bool) error {
	if f.failure == 0 {
		return internalf("external key store: %w", f.err)
	}
	typ := wire.KMSInvalidState
	if createKey {
		typ = wire.CustomKeyStoreInvalidState
		if f.failure == xks.FailProxy {
			switch f.name {
			case xks.InvalidStateException, xks.InvalidKeyUsageException:
				typ = wire.XksKeyInvalidConfiguration
			case xks.KeyNotFoundException:
				typ = wire.XksKeyNotFound
			case xks.AccessDeniedException:
				typ = wire.KMSInvalidState
			}
		}
	}
	return wire.Errorf(typ, "%s", f.message())
}

// xksStatus is an external key store's connection state.
type xksStatus struct {
	state keystore.ConnectionState
	code  keystore.ErrorCode
	// gen numbers connects and disconnects, so a connect's result never
	// lands on a store disconnected (or connected again) since.
	gen uint64
}

// xksLive is an external key store in memory: its state and, while it
// may be used, the client of its proxy. Safe for concurrent use.
type xksLive struct {
	mu     sync.Mutex // serialises connect, disconnect and changes of the client
	status atomic.Pointer[xksStatus]
	client atomic.Pointer[xks.Client]
	// made is what client was made from (proxy settings and sealed
	// secret; guarded by mu), to see a change another node recorded.
	made string
	// checked is when a request last read the record (xksRecheck).
	checked atomic.Int64
}

// xksMadeFrom is what a proxy client of ks depends on.
func xksMadeFrom(ks *store.KeyStore) string {
	x := ks.XKS
	return strings.Join([]string{x.URIEndpoint, x.URIPath, x.AccessKeyID, x.Connectivity, string(ks.Password)}, "\x00")
}

// setClient replaces l's client by c, made from made; l.mu is held.
func (l *xksLive) setClient(c *xks.Client, made string) {
	if old := l.client.Swap(c); old != nil && old != c {
		old.Close()
	}
	l.made = made
}

// xksState is the state every node reports for an external key store:
// the record's.
func xksState(ks *store.KeyStore) (keystore.ConnectionState, keystore.ErrorCode) {
	switch st := keystore.ConnectionState(ks.ConnectionState); st {
	case "":
		return keystore.Disconnected, ""
	case keystore.Failed:
		return st, keystore.ErrorCode(ks.ConnectionError)
	default:
		return st, ""
	}
}

func (l *xksLive) state() (keystore.ConnectionState, keystore.ErrorCode) {
	st := l.status.Load()
	return st.state, st.code
}

func (l *xksLive) set(st keystore.ConnectionState, code keystore.ErrorCode, gen uint64) {
	l.status.Store(&xksStatus{state: st, code: code, gen: gen})
}

// xksStore returns the live external key store id, registering it
// DISCONNECTED on first use.
func (s *Service) xksStore(id string) *xksLive {
	if v, ok := s.xksStores.Load(id); ok {
		return v.(*xksLive)
	}
	l := &xksLive{}
	l.set(keystore.Disconnected, "", 0)
	v, _ := s.xksStores.LoadOrStore(id, l)
	return v.(*xksLive)
}

// xksClient builds the client of ks's proxy, opening its secret from the
// vault.
func (s *Service) xksClient(ctx context.Context, ks *store.KeyStore, secret string) (*xks.Client, error) {
	if secret == "" {
		var err error
		if secret, err = s.openPassword(ctx, ks.ID, ks.Password); err != nil {
			return nil, err
		}
	}
	return xks.NewClient(xks.ClientConfig{Endpoint: ks.XKS.URIEndpoint, Path: ks.XKS.URIPath, AccessKeyID: ks.XKS.AccessKeyID, Secret: secret,
		Region: ks.Region, RootCAs: s.xksCfg.RootCAs, ConnectTo: s.xksCfg.ConnectTo, Timeout: s.xksCfg.Timeout})
}

// checkProxy asks c's proxy for its health, for kmsOperation, and fails
// unless it answers and some external key manager can serve.
func (s *Service) checkProxy(ctx context.Context, c *xks.Client, op, requestID string) *proxyFailure {
	h, err := c.Health(ctx, xks.RequestMetadata{KmsOperation: op, KmsRequestID: requestID})
	if err != nil {
		f := failureOf(err)
		return &f
	}
	if h.AllUnavailable() {
		return &proxyFailure{down: true, err: errors.New("every external key manager is UNAVAILABLE")}
	}
	return nil
}

type XksProxyAuthenticationCredential struct {
	AccessKeyId        string
	RawSecretAccessKey string
}

// XksProxyConfiguration is what DescribeCustomKeyStores shows of an
// external key store's proxy: never its secret.
type XksProxyConfiguration struct {
	AccessKeyId             string `json:",omitempty"`
	Connectivity            string `json:",omitempty"`
	UriEndpoint             string `json:",omitempty"`
	UriPath                 string `json:",omitempty"`
	VpcEndpointServiceName  string `json:",omitempty"`
	VpcEndpointServiceOwner string `json:",omitempty"`
}

func xksConfiguration(ks *store.KeyStore) *XksProxyConfiguration {
	x := ks.XKS
	return &XksProxyConfiguration{AccessKeyId: x.AccessKeyID, Connectivity: x.Connectivity, UriEndpoint: x.URIEndpoint, UriPath: x.URIPath,
		VpcEndpointServiceName: x.VpcEndpointServiceName, VpcEndpointServiceOwner: x.VpcEndpointServiceOwner}
}

// vpcNotFound is the answer to VPC_ENDPOINT_SERVICE connectivity. hsmkms
// runs outside AWS: it has no Amazon VPC in which an interface endpoint to
// the service could be made, so no VPC endpoint service can be found, as
// AWS KMS answers for a service it cannot find.
func vpcNotFound(name string) error {
	return wire.Errorf(wire.XksProxyVpcEndpointServiceNotFound,
		"The VPC endpoint service %s could not be found: hsmkms has no Amazon VPC to reach it from. Use XksProxyConnectivity PUBLIC_ENDPOINT.", name)
}

// checkXKSParams applies what the model cannot: which parameters go with
// which connectivity.
func checkXKSParams(connectivity, vpcName string) error {
	switch connectivity {
	case connectivityPublic:
		if vpcName != "" {
			return wire.Errorf(wire.Validation, "XksProxyVpcEndpointServiceName is valid only with XksProxyConnectivity VPC_ENDPOINT_SERVICE.")
		}
	case connectivityVPC:
		if vpcName == "" {
			return wire.Errorf(wire.Validation, "XksProxyVpcEndpointServiceName is required when XksProxyConnectivity is VPC_ENDPOINT_SERVICE.")
		}
		return vpcNotFound(vpcName)
	}
	return nil
}

func xksURIInUse(ks *store.KeyStore) error {
	return wire.Errorf(wire.XksProxyURIInUse, "The external key store proxy URI %s%s is already associated with another external key store in this account and Region.",
		ks.XKS.URIEndpoint, ks.XKS.URIPath)
}

// createXKS is CreateCustomKeyStore for CustomKeyStoreType
// EXTERNAL_KEY_STORE: the proxy must answer a health check with the given
// settings before the store is recorded, as AWS checks a public endpoint.
func (s *Service) createXKS(ctx context.Context, r *Request, in *CreateCustomKeyStoreInput) (*CreateCustomKeyStoreOutput, error) {
	for _, p := range []struct {
		name string
		set  bool
	}{{"CloudHsmClusterId", in.CloudHsmClusterId != ""}, {"TrustAnchorCertificate", in.TrustAnchorCertificate != ""}, {"KeyStorePassword", in.KeyStorePassword != ""}} {
		if p.set {
			return nil, wire.Errorf(wire.Validation, "%s is valid only for an AWS_CLOUDHSM custom key store.", p.name)
		}
	}
	for _, p := range []struct {
		name string
		set  bool
	}{{"XksProxyConnectivity", in.XksProxyConnectivity != ""}, {"XksProxyUriEndpoint", in.XksProxyUriEndpoint != ""},
		{"XksProxyUriPath", in.XksProxyUriPath != ""}, {"XksProxyAuthenticationCredential", in.XksProxyAuthenticationCredential != nil}} {
		if !p.set {
			return nil, wire.Errorf(wire.Validation, "%s is required for an EXTERNAL_KEY_STORE custom key store.", p.name)
		}
	}
	if err := checkXKSParams(in.XksProxyConnectivity, in.XksProxyVpcEndpointServiceName); err != nil {
		return nil, err
	}
	id := newKeyStoreID()
	ks := &store.KeyStore{ID: id, Account: r.Caller.Account, Region: r.Caller.Region, Name: in.CustomKeyStoreName, Type: storeTypeExternal,
		CreationDate: s.now().UTC(), XKS: store.XKSProxy{Connectivity: in.XksProxyConnectivity, URIEndpoint: in.XksProxyUriEndpoint,
			URIPath: in.XksProxyUriPath, AccessKeyID: in.XksProxyAuthenticationCredential.AccessKeyId}}
	c, err := s.xksClient(ctx, ks, in.XksProxyAuthenticationCredential.RawSecretAccessKey)
	if err != nil {
		return nil, wire.Errorf(wire.XksProxyInvalidConfiguration, "The external key store proxy endpoint or path is not valid.")
	}
	defer c.Close()
	if f := s.checkProxy(ctx, c, "CreateCustomKeyStore", r.ID); f != nil {
		s.log.Warn("external key store proxy failed the health check", "request_id", r.ID, "endpoint", ks.XKS.URIEndpoint, "path", ks.XKS.URIPath, "error", f.err)
		return nil, f.storeAdminError()
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	if ks.Password, err = s.sealPassword(ctx, id, in.XksProxyAuthenticationCredential.RawSecretAccessKey); err != nil {
		return nil, tokenError(err, tokenCall{})
	}
	switch err := s.store.CreateKeyStore(ctx, ks, maxKeyStoresPerRegion); {
	case errors.Is(err, store.ErrKeyStoreNameInUse):
		return nil, keyStoreNameInUse(in.CustomKeyStoreName)
	case errors.Is(err, store.ErrXksProxyURIInUse):
		return nil, xksURIInUse(ks)
	case errors.Is(err, store.ErrLimitExceeded):
		return nil, wire.Errorf(wire.LimitExceeded, "Cannot exceed quota for CustomKeyStoresPerAccount: %d", maxKeyStoresPerRegion)
	case err != nil:
		return nil, err
	}
	s.xksStore(id)
	return &CreateCustomKeyStoreOutput{CustomKeyStoreId: id}, nil
}

// xksEntry is an external key store as DescribeCustomKeyStores lists it.
func (s *Service) xksEntry(ks *store.KeyStore) CustomKeyStoreEntry {
	st, code := xksState(ks)
	e := CustomKeyStoreEntry{CustomKeyStoreId: ks.ID, CustomKeyStoreName: ks.Name, CreationDate: wire.Time(ks.CreationDate),
		CustomKeyStoreType: storeTypeExternal, ConnectionState: string(st), XksProxyConfiguration: xksConfiguration(ks)}
	if st == keystore.Failed {
		e.ConnectionErrorCode = string(code)
	}
	return e
}

// connectXKS is ConnectCustomKeyStore for an external key store: it
// answers at once and checks the proxy in the background (DISCONNECTED →
// CONNECTING → CONNECTED or FAILED with the ConnectionErrorCode the
// proxy's answer gives), holding the store's connect mark so that one
// node does it; the other nodes follow the recorded state.
func (s *Service) connectXKS(ctx context.Context, r *Request, ks *store.KeyStore) (*Empty, error) {
	switch st, _ := xksState(ks); st {
	case keystore.Connected, keystore.Connecting:
		return &Empty{}, nil
	case keystore.Failed, keystore.Disconnecting:
		return nil, keyStoreInvalidState(ks.ID, st, "DISCONNECTED")
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	release, err := s.claim(ctx, connectMark(ks.ID), "")
	if errors.Is(err, store.ErrMarkHeld) {
		return &Empty{}, nil // another node is connecting it this moment
	}
	if err != nil {
		return nil, err
	}
	_, err = s.store.UpdateKeyStore(ctx, ks.ID, func(k *store.KeyStore) error {
		switch st, _ := xksState(k); st {
		case keystore.Disconnected:
		case keystore.Failed:
			return keyStoreInvalidState(ks.ID, st, "DISCONNECTED")
		default:
			return errAlreadyConnecting
		}
		k.Connect, k.ConnectionState, k.ConnectionError = true, string(keystore.Connecting), ""
		return nil
	})
	if err != nil {
		release()
		if errors.Is(err, errAlreadyConnecting) {
			return &Empty{}, nil
		}
		return nil, err
	}
	live := s.xksStore(ks.ID)
	live.mu.Lock()
	live.set(keystore.Connecting, "", live.status.Load().gen+1)
	live.mu.Unlock()
	s.connectXKSInBackground(ks.ID, r.ID, release)
	return &Empty{}, nil
}

// connectXKSInBackground checks the store's proxy and records the result
// as the store's state, unless the store was disconnected meanwhile; then
// it releases the store's connect mark. The node holding the mark does
// it, so the connect is one internal action in the audit trail, as a
// CloudHSM key store's is (connectStore): a ConnectCustomKeyStore service
// event with the outcome, written by that node. If its intent cannot be
// recorded, the store is left disconnected.
func (s *Service) connectXKSInBackground(id, requestID string, release func()) {
	s.goBackground(func() {
		defer release()
		ctx, cancel := context.WithTimeout(s.life, xksHealthCheckTimeout)
		defer cancel()
		account, region := "", ""
		ks, kerr := s.store.GetKeyStore(ctx, id)
		if kerr == nil {
			account, region = ks.Account, ks.Region
		}
		err := s.serviceAction(ctx, "ConnectCustomKeyStore", account, region, nil, func() (audit.Fields, audit.Fields, error) {
			state, code := s.connectXKSNow(ctx, id, requestID, ks, kerr)
			details := audit.Fields{{Name: "customKeyStoreId", Value: id}, {Name: "customKeyStoreType", Value: "EXTERNAL_KEY_STORE"},
				{Name: "connectionState", Value: string(state)}}
			if code != "" {
				details.Add("connectionErrorCode", string(code))
			}
			return details, nil, nil
		})
		if err != nil {
			s.log.Error("external key store not connected: its audit record could not be written", "store", id, "error", err)
			s.abandonConnect(ctx, id)
			live := s.xksStore(id)
			live.mu.Lock()
			if st := live.status.Load(); st.state == keystore.Connecting {
				live.set(keystore.Disconnected, "", st.gen+1)
			}
			live.mu.Unlock()
		}
		s.kickSync()
	})
}

// connectXKSNow checks the store's proxy and records the result as the
// store's state, unless the store was disconnected meanwhile; it returns
// the state and error code found.
func (s *Service) connectXKSNow(ctx context.Context, id, requestID string, ks *store.KeyStore, err error) (keystore.ConnectionState, keystore.ErrorCode) {
	state, code, client := keystore.Failed, xksInternalError, (*xks.Client)(nil)
	if err == nil {
		client, err = s.xksClient(ctx, ks, "")
	}
	switch {
	case err != nil:
		s.log.Warn("external key store connection failed", "store", id, "code", code, "error", err)
	default:
		if f := s.checkProxy(ctx, client, "ConnectCustomKeyStore", requestID); f != nil {
			code = f.connectionCode()
			s.log.Warn("external key store connection failed", "store", id, "code", code, "error", f.err)
			client.Close()
			client = nil
		} else {
			state, code = keystore.Connected, ""
			s.log.Info("external key store connected", "store", id, "endpoint", ks.XKS.URIEndpoint, "path", ks.XKS.URIPath)
		}
	}
	rec, err := s.store.UpdateKeyStore(ctx, id, func(k *store.KeyStore) error {
		if k.ConnectionState != string(keystore.Connecting) {
			return errNotConnecting // disconnected meanwhile: that stands
		}
		k.ConnectionState, k.ConnectionError = string(state), string(code)
		return nil
	})
	switch {
	case err == nil:
		live := s.xksStore(id)
		live.mu.Lock()
		if client != nil {
			live.setClient(client, xksMadeFrom(rec))
			client = nil
		}
		live.set(state, code, live.status.Load().gen+1)
		live.mu.Unlock()
	case errors.Is(err, errNotConnecting), errors.Is(err, store.ErrNotFound):
	default:
		// Left CONNECTING: a node takes it over once the mark is released.
		s.log.Error("external key store: recording the outcome of its connection", "store", id, "error", err)
	}
	if client != nil {
		client.Close()
	}
	return state, code
}

// disconnectXKS is DisconnectCustomKeyStore for an external key store.
func (s *Service) disconnectXKS(ctx context.Context, r *Request, ks *store.KeyStore) (*Empty, error) {
	if st, _ := xksState(ks); st == keystore.Disconnected || st == keystore.Disconnecting {
		return nil, keyStoreInvalidState(ks.ID, st, "CONNECTED, CONNECTING or FAILED")
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	if _, err := s.store.UpdateKeyStore(ctx, ks.ID, func(k *store.KeyStore) error {
		k.Connect, k.ConnectionState, k.ConnectionError = false, string(keystore.Disconnected), ""
		return nil
	}); err != nil {
		return nil, err
	}
	live := s.xksStore(ks.ID)
	live.mu.Lock()
	defer live.mu.Unlock()
	live.setClient(nil, "")
	live.set(keystore.Disconnected, "", live.status.Load().gen+1)
	return &Empty{}, nil
}

// updateXKS is UpdateCustomKeyStore for an external key store: the name,
// the credential and the path in any state; the endpoint and connectivity
// only while DISCONNECTED. New proxy settings must pass a health check
// before they are recorded, and a connected store uses them at once.
func (s *Service) updateXKS(ctx context.Context, r *Request, ks *store.KeyStore, in *UpdateCustomKeyStoreInput) (*Empty, error) {
	for _, p := range []struct {
		name string
		set  bool
	}{{"KeyStorePassword", in.KeyStorePassword != ""}, {"CloudHsmClusterId", in.CloudHsmClusterId != ""}} {
		if p.set {
			return nil, wire.Errorf(wire.Validation, "%s is valid only for an AWS_CLOUDHSM custom key store.", p.name)
		}
	}
	live := s.xksStore(ks.ID)
	live.mu.Lock()
	defer live.mu.Unlock()
	state, _ := xksState(ks)
	if (in.XksProxyUriEndpoint != "" || in.XksProxyConnectivity != "" || in.XksProxyVpcEndpointServiceName != "" || in.XksProxyVpcEndpointServiceOwner != "") &&
		state != keystore.Disconnected {
		return nil, keyStoreInvalidState(ks.ID, state, "DISCONNECTED to change its proxy's endpoint or connectivity")
	}
	next := *ks
	if in.XksProxyConnectivity != "" {
		next.XKS.Connectivity = in.XksProxyConnectivity
	}
	if in.XksProxyUriEndpoint != "" {
		next.XKS.URIEndpoint = in.XksProxyUriEndpoint
	}
	if in.XksProxyUriPath != "" {
		next.XKS.URIPath = in.XksProxyUriPath
	}
	if in.XksProxyVpcEndpointServiceName != "" {
		next.XKS.VpcEndpointServiceName = in.XksProxyVpcEndpointServiceName
	}
	if in.XksProxyVpcEndpointServiceOwner != "" {
		next.XKS.VpcEndpointServiceOwner = in.XksProxyVpcEndpointServiceOwner
	}
	if err := checkXKSParams(next.XKS.Connectivity, next.XKS.VpcEndpointServiceName); err != nil {
		return nil, err
	}
	secret := ""
	if in.XksProxyAuthenticationCredential != nil {
		next.XKS.AccessKeyID = in.XksProxyAuthenticationCredential.AccessKeyId
		secret = in.XksProxyAuthenticationCredential.RawSecretAccessKey
	}
	var client *xks.Client
	if next.XKS != ks.XKS || secret != "" {
		c, err := s.xksClient(ctx, &next, secret)
		if err != nil {
			return nil, wire.Errorf(wire.XksProxyInvalidConfiguration, "The external key store proxy endpoint or path is not valid.")
		}
		if f := s.checkProxy(ctx, c, "UpdateCustomKeyStore", r.ID); f != nil {
			c.Close()
			s.log.Warn("external key store proxy failed the health check", "request_id", r.ID, "store", ks.ID, "error", f.err)
			return nil, f.storeAdminError()
		}
		client = c
	}
	if err := r.proceed(); err != nil {
		if client != nil {
			client.Close()
		}
		return nil, err
	}
	var sealed []byte
	if secret != "" {
		var err error
		if sealed, err = s.sealPassword(ctx, ks.ID, secret); err != nil {
			if client != nil {
				client.Close()
			}
			return nil, tokenError(err, tokenCall{})
		}
	}
	rec, err := s.store.UpdateKeyStore(ctx, ks.ID, func(k *store.KeyStore) error {
		if in.NewCustomKeyStoreName != "" {
			k.Name = in.NewCustomKeyStoreName
		}
		k.XKS = next.XKS
		if sealed != nil {
			k.Password = sealed
		}
		return nil
	})
	if err != nil {
		if client != nil {
			client.Close()
		}
		switch {
		case errors.Is(err, store.ErrKeyStoreNameInUse):
			return nil, keyStoreNameInUse(in.NewCustomKeyStoreName)
		case errors.Is(err, store.ErrXksProxyURIInUse):
			return nil, xksURIInUse(&next)
		}
		return nil, err
	}
	if client != nil {
		if st, _ := live.state(); st == keystore.Connected {
			live.setClient(client, xksMadeFrom(rec))
		} else {
			client.Close()
		}
	}
	return &Empty{}, nil
}

// syncXKSStores brings this node's external key stores in line with
// their records: a client of each CONNECTED store's proxy, made again
// when its settings changed; none for the others; and the connection of
// a store left CONNECTING by a node that is gone taken over.
func (s *Service) syncXKSStores(ctx context.Context) {
	all, err := s.store.AllKeyStores(ctx)
	if err != nil {
		s.log.Warn("external key store sync: listing the stores", "error", err)
		return
	}
	known := map[string]bool{}
	for _, ks := range all {
		if ks.Type != storeTypeExternal {
			continue
		}
		known[ks.ID] = true
		s.syncXKSStore(ctx, ks)
	}
	s.xksStores.Range(func(k, v any) bool {
		if !known[k.(string)] {
			live := v.(*xksLive)
			live.mu.Lock()
			live.setClient(nil, "")
			live.mu.Unlock()
			s.xksStores.Delete(k) // deleted on another node
		}
		return true
	})
}

func (s *Service) syncXKSStore(ctx context.Context, ks *store.KeyStore) {
	state, code := xksState(ks)
	if state == keystore.Connecting {
		if m, err := s.liveMark(ctx, connectMark(ks.ID)); err == nil && m == nil {
			if release, err := s.claim(ctx, connectMark(ks.ID), ""); err == nil {
				s.log.Warn("taking over the connection of an external key store whose connecting node is gone", "store", ks.ID)
				rid, _ := newKeyID() // a request id for the proxy's log: a connect of hsmkms's own
				s.connectXKSInBackground(ks.ID, rid, release)
			}
		}
	}
	live := s.xksStore(ks.ID)
	live.mu.Lock()
	defer live.mu.Unlock()
	if state != keystore.Connected {
		cur, _ := live.state()
		if state == keystore.Connecting && cur == keystore.Connected {
			return // this node's connect recorded CONNECTED since the read
		}
		live.setClient(nil, "")
		live.set(state, code, live.status.Load().gen+1)
		return
	}
	made := xksMadeFrom(ks)
	if cur, _ := live.state(); cur == keystore.Connected && live.client.Load() != nil && live.made == made {
		return
	}
	c, err := s.xksClient(ctx, ks, "")
	if err != nil {
		s.log.Warn("external key store: making the client of its proxy; its keys are unavailable on this node until it can", "store", ks.ID, "error", err)
		live.setClient(nil, "")
		live.set(keystore.Connecting, "", live.status.Load().gen+1)
		return
	}
	live.setClient(c, made)
	live.set(keystore.Connected, "", live.status.Load().gen+1)
}

// xksConnected returns the client of the external key store id, or nil
// when the store is not CONNECTED. A store this node does not hold as
// CONNECTED is looked up in the database first (at most every
// xksRecheck): another node may have connected it a moment ago, before
// the change feed told this one.
func (s *Service) xksConnected(id string) *xks.Client {
	live := s.xksStore(id)
	if st, _ := live.state(); st != keystore.Connected {
		if !s.xksRecheck(id, live) {
			return nil
		}
		if st, _ := live.state(); st != keystore.Connected {
			return nil
		}
	}
	return live.client.Load()
}

// xksRecheckEvery bounds how often a node reads the record of an external
// key store it does not hold as CONNECTED on the request path.
const xksRecheckEvery = 50 * time.Millisecond

// xksRecheck brings live in line with the store's record, unless it did
// less than xksRecheckEvery ago; it reports whether it looked.
func (s *Service) xksRecheck(id string, live *xksLive) bool {
	now := time.Now().UnixNano()
	last := live.checked.Load()
	if now-last < int64(xksRecheckEvery) || !live.checked.CompareAndSwap(last, now) {
		return false
	}
	ctx, cancel := context.WithTimeout(s.life, 5*time.Second)
	defer cancel()
	ks, err := s.store.GetKeyStore(ctx, id)
	if err != nil || ks.Type != storeTypeExternal {
		return false
	}
	s.syncXKSStore(ctx, ks)
	return true
}

// closeXKS drops every proxy client's connections.
func (s *Service) closeXKS() {
	s.xksStores.Range(func(_, v any) bool {
		if c := v.(*xksLive).client.Load(); c != nil {
			c.Close()
		}
		return true
	})
}
