package kms

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hsmkms/hsmkms/kms/audit"
	"github.com/hsmkms/hsmkms/kms/sigv4"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// Auditing: every call, and every action hsmkms takes on its own, becomes
// a CloudTrail record in the audit trail (package audit) before anything
// is answered.
//
//   - The runner builds each call's record from its Request (who, from
//     where, what it named, what authorization decided, which keys it
//     touched) and its input and outcome, and writes it before the answer
//     is sent. If the record cannot be written the answer is
//     KMSInternalException: a read-only call's result never leaves
//     hsmkms.
//   - A call that may change something (an operation the table does not
//     mark read-only) first gets an intent record, durable before its
//     handler runs (Request.decoded): if that cannot be written, the
//     handler never runs and the call is not performed. So no change is
//     ever made without a record of the call that made it; if the final
//     record then fails, the intent stays as the record of a call whose
//     outcome the caller never learned (KMSInternalException), as a crash
//     between the two leaves it.
//   - Requests refused before their operation runs (authentication
//     failures, unknown operations, invalid input) are recorded by the
//     wire server's Rejected hook.
//   - Internal actions (key deletion, automatic rotation, key store
//     connects) are AwsServiceEvent records, with an intent first.
//
// Records never hold plaintext, ciphertext, data keys, signatures, MACs,
// public key blobs, grant tokens or passwords: every []byte member of an
// input or output is left out by type, and the few secret strings by name.

// AuditConfig turns the audit trail on.
type AuditConfig struct {
	// Dir holds the trail's files, digests and public key.
	Dir string
	// MaxFileSize, RotationInterval and Retention: see audit.Config.
	MaxFileSize      int64
	RotationInterval time.Duration
	Retention        time.Duration
	// OmitEncryptionContext leaves encryption contexts out of the
	// records. AWS logs them, and so does hsmkms by default: they are
	// not secret, and say what a key was used for.
	OmitEncryptionContext bool
	// CommitDelay is how long a write of the trail may wait for calls
	// under way to add their records to it (audit.Config.CommitDelay); 0
	// means DefaultCommitDelay, negative none.
	CommitDelay time.Duration
}

// DefaultCommitDelay bounds the group commit's wait for calls under way.
// Measured on the 2-core reference machine (README, "Audit trail"): an
// fdatasync there costs ~100 µs of CPU, several times what the rest of a
// record costs, and a call under way appends within a few hundred µs.
const DefaultCommitDelay = 500 * time.Microsecond

// intentEvent is the eventType of intent records: written before a call
// that may change something runs, with the call's requestID. A SIEM
// counting calls counts AwsApiCall records only.
const intentEvent = "HsmkmsApiCallIntent"

// openTrail opens the audit trail: its signing key on the default token,
// its directory, and what the last run left.
func (s *Service) openTrail(ctx context.Context, cfg *AuditConfig) error {
	signer, err := s.keystores.AuditSigner(ctx)
	if err != nil {
		return err
	}
	s.omitEC = cfg.OmitEncryptionContext
	delay := cfg.CommitDelay
	if delay == 0 {
		delay = DefaultCommitDelay
	}
	t, err := audit.Open(audit.Config{
		Pending: s.underWay, CommitDelay: delay,
		Dir: cfg.Dir, MaxFileSize: cfg.MaxFileSize, RotationInterval: cfg.RotationInterval, Retention: cfg.Retention,
		Signer: signer, Logger: s.log.Named("audit"), Now: s.now,
		OnDurable: s.usage.durable,
		Observe:   s.metrics.auditBatch,
	})
	if err != nil {
		return err
	}
	s.trail = t
	s.log.Info("audit trail open", "dir", cfg.Dir, "trail", t.ID(), "public_key_sha256", audit.Fingerprint(signer.PublicKey()))
	return nil
}

// writeIntent records that r is about to run.
func (s *Service) writeIntent(ctx context.Context, r *Request) error {
	ev := s.apiEvent(r, nil, nil)
	ev.EventType, ev.ResponseElements, ev.AdditionalEventData, ev.Resources = intentEvent, nil, nil, nil
	if _, err := s.trail.Append(ctx, ev); err != nil {
		s.log.Error("audit intent not written: the call is not performed", "request_id", r.ID, "operation", r.op.name, "error", err)
		return wire.Internal()
	}
	return nil
}

// audited writes r's record and returns what the caller gets: the
// operation's answer, or KMSInternalException if the record could not be
// written.
func (s *Service) audited(ctx context.Context, r *Request, out any, err error) (any, error) {
	if s.trail == nil {
		if err == nil && r.op.tracked {
			s.usage.note(r.op.name, r.start, audit.NewID(), r.ID, r.keys)
		}
		return out, err
	}
	ev := s.apiEvent(r, out, err)
	if _, aerr := s.trail.Append(ctx, ev); aerr != nil {
		s.log.Error("audit record not written: answering KMSInternalException", "request_id", r.ID, "operation", r.op.name, "error", aerr)
		return nil, wire.Internal()
	}
	return out, err
}

// apiEvent is r's AwsApiCall record.
func (s *Service) apiEvent(r *Request, out any, err error) *audit.Event {
	ev := &audit.Event{
		EventVersion:       audit.EventVersion,
		UserIdentity:       identityOf(r.Caller),
		EventTime:          audit.FormatTime(r.start),
		Time:               r.start,
		EventSource:        audit.KMSSource,
		EventName:          r.op.name,
		AWSRegion:          r.Caller.Region,
		SourceIPAddress:    r.SourceIP,
		UserAgent:          r.UserAgent,
		RequestParameters:  s.requestParameters(r),
		RequestID:          r.ID,
		EventID:            audit.NewID(),
		ReadOnly:           r.op.readOnly,
		Resources:          resourcesOf(r),
		EventType:          audit.APICall,
		ManagementEvent:    true,
		RecipientAccountID: r.Caller.Account,
		EventCategory:      "Management",
		TLSDetails:         tlsDetails(r.tls, r.host),
	}
	if err != nil {
		ev.ErrorCode, ev.ErrorMessage = errorOf(err)
	} else if !r.op.readOnly {
		ev.ResponseElements = render(reflect.ValueOf(out), false, s.omitEC)
	}
	var more audit.Fields
	if r.keyStore != "" {
		more.Add("customKeyStoreId", r.keyStore)
	}
	if r.material != "" {
		more.Add("keyMaterialId", r.material)
	}
	ev.AdditionalEventData = more
	return ev
}

// errorOf is a record's errorCode and errorMessage: what the caller was
// answered. CloudTrail records KMS's denials as "AccessDenied".
func errorOf(err error) (string, string) {
	var we *wire.Error
	if !errors.As(err, &we) {
		we = wire.Internal()
	}
	if we.Type == wire.AccessDenied {
		return "AccessDenied", we.Message
	}
	return we.Type, we.Message
}

// identityOf is the record's userIdentity for an authenticated caller.
func identityOf(c Caller) audit.UserIdentity {
	id := audit.UserIdentity{ARN: c.PrincipalARN, AccountID: c.Account, AccessKeyID: c.AccessKeyID, Type: "Unknown"}
	resource := strings.TrimPrefix(c.PrincipalARN, "arn:aws:iam::"+c.Account+":")
	switch {
	case strings.HasPrefix(resource, "user/"):
		id.Type = "IAMUser"
		id.UserName = resource[strings.LastIndexByte(resource, '/')+1:]
	case strings.HasPrefix(resource, "role/"):
		id.Type = "Role"
	case resource == "root":
		id.Type = "Root"
	}
	return id
}

// resourcesOf lists the keys the request acted on, then the aliases it
// was authorized on, as CloudTrail lists KMS's resources.
func resourcesOf(r *Request) []audit.Resource {
	var out []audit.Resource
	for _, arn := range r.keys {
		out = append(out, audit.Resource{AccountID: accountOfARN(arn), Type: "AWS::KMS::Key", ARN: arn})
	}
	for _, d := range r.decisions {
		if d.kind == onAlias && d.allowed {
			out = append(out, audit.Resource{AccountID: accountOfARN(d.resource), Type: "AWS::KMS::Alias", ARN: d.resource})
		}
	}
	return out
}

func accountOfARN(s string) string {
	if a, ok := parseARN(s); ok {
		return a.Account
	}
	return ""
}

func tlsDetails(cs *tls.ConnectionState, host string) *audit.TLSDetails {
	if cs == nil {
		return nil
	}
	v := map[uint16]string{tls.VersionTLS12: "TLSv1.2", tls.VersionTLS13: "TLSv1.3"}[cs.Version]
	if v == "" {
		v = tls.VersionName(cs.Version)
	}
	return &audit.TLSDetails{TLSVersion: v, CipherSuite: suiteName(cs.CipherSuite), ClientProvidedHostHeader: host}
}

// suiteNames caches tls.CipherSuiteName, which builds the list of every
// suite on each call.
var suiteNames sync.Map // uint16 → string

func suiteName(id uint16) string {
	if n, ok := suiteNames.Load(id); ok {
		return n.(string)
	}
	n := tls.CipherSuiteName(id)
	suiteNames.Store(id, n)
	return n
}

// requestParameters are the call's parameters as CloudTrail logs KMS's:
// the input's members, lower camel case, absent ones left out, secrets
// and blobs never; then what AWS adds or renames per operation.
func (s *Service) requestParameters(r *Request) audit.Fields {
	if r.input == nil {
		return nil
	}
	f := render(reflect.ValueOf(r.input), true, s.omitEC)
	if f == nil {
		f = audit.Fields{}
	}
	switch r.op.name {
	case "Encrypt":
		setDefault(&f, "encryptionAlgorithm", algSymmetric)
	case "Decrypt":
		// Always the key that decrypted, and the algorithm, even when
		// the request named neither.
		if len(r.keys) > 0 {
			set(&f, "keyId", r.keys[0])
		}
		setDefault(&f, "encryptionAlgorithm", algSymmetric)
	case "ReEncrypt":
		setDefault(&f, "sourceEncryptionAlgorithm", algSymmetric)
		setDefault(&f, "destinationEncryptionAlgorithm", algSymmetric)
	case "CreateKey":
		setDefault(&f, "description", "")
		setDefault(&f, "keyUsage", "ENCRYPT_DECRYPT")
		setDefault(&f, "keySpec", "SYMMETRIC_DEFAULT")
		setDefault(&f, "origin", "AWS_KMS")
		setDefault(&f, "bypassPolicyLockoutSafetyCheck", false)
	case "CreateCustomKeyStore", "UpdateCustomKeyStore":
		rename(f, "cloudHsmClusterId", "clusterId")
		drop(&f, "trustAnchorCertificate")
		if c := xksCredentialOf(r.input); c != nil {
			// As CloudTrail records an external key store's credential:
			// the access key id, and the secret hidden.
			f.Add("xksProxyAuthenticationCredential", audit.Fields{{Name: "accessKeyId", Value: c.AccessKeyId},
				{Name: "rawSecretAccessKey", Value: hiddenValue}})
		}
	}
	return f
}

// hiddenValue is what CloudTrail writes in place of a secret parameter.
const hiddenValue = "HIDDEN_DUE_TO_SECURITY_REASONS"

// xksCredentialOf is the external key store credential of a
// CreateCustomKeyStore or UpdateCustomKeyStore input, if it has one.
func xksCredentialOf(in any) *XksProxyAuthenticationCredential {
	switch in := in.(type) {
	case *CreateCustomKeyStoreInput:
		return in.XksProxyAuthenticationCredential
	case *UpdateCustomKeyStoreInput:
		return in.XksProxyAuthenticationCredential
	}
	return nil
}

func set(f *audit.Fields, name string, v any) {
	for i := range *f {
		if (*f)[i].Name == name {
			(*f)[i].Value = v
			return
		}
	}
	f.Add(name, v)
}

func setDefault(f *audit.Fields, name string, v any) {
	if _, ok := f.Get(name); !ok {
		f.Add(name, v)
	}
}

func rename(f audit.Fields, from, to string) {
	for i := range f {
		if f[i].Name == from {
			f[i].Name = to
		}
	}
}

func drop(f *audit.Fields, name string) {
	out := (*f)[:0]
	for _, x := range *f {
		if x.Name != name {
			out = append(out, x)
		}
	}
	*f = out
}

// secretMembers are string members that are secrets: never recorded. Every
// []byte member (plaintext, ciphertext, data keys, messages, signatures,
// MACs, public keys) is left out by its type.
var secretMembers = map[string]bool{
	"KeyStorePassword": true, "GrantToken": true, "GrantTokens": true,
	"XksProxyAuthenticationCredential": true, "Recipient": true,
}

// eventTimeLayout is how CloudTrail writes dates inside KMS's
// responseElements ("Jun 30, 2020 2:34:07 AM").
const eventTimeLayout = "Jan 2, 2006 3:04:05 PM"

var (
	bytesType = reflect.TypeFor[[]byte]()
	timeType  = reflect.TypeFor[wire.Time]()
)

// plans caches, per struct type, the members render writes.
var plans sync.Map // reflect.Type → []member

type member struct {
	index []int
	name  string // lower camel case
	ec    bool   // an encryption context
}

func planOf(t reflect.Type) []member {
	if p, ok := plans.Load(t); ok {
		return p.([]member)
	}
	var out []member
	for _, f := range reflect.VisibleFields(t) {
		if !f.IsExported() || f.Anonymous || secretMembers[f.Name] || f.Type == bytesType {
			continue
		}
		name := f.Name
		if tag := f.Tag.Get("json"); tag != "" {
			if n, _, _ := strings.Cut(tag, ","); n == "-" {
				continue
			} else if n != "" {
				name = n
			}
		}
		out = append(out, member{index: f.Index, name: lowerFirst(name), ec: strings.Contains(f.Name, "EncryptionContext")})
	}
	plans.Store(t, out)
	return out
}

func lowerFirst(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	return string(unicode.ToLower(r)) + s[n:]
}

// render renders a struct (or pointer to one) as an object of its
// members. Requests leave out members at their zero value (absent from the
// request); responses keep false and zero where AWS returns them.
func render(v reflect.Value, request, omitEC bool) audit.Fields {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return nil
	}
	var out audit.Fields
	for _, m := range planOf(v.Type()) {
		if m.ec && omitEC {
			continue
		}
		x, ok := value(v.FieldByIndex(m.index), request, omitEC)
		if ok {
			out.Add(m.name, x)
		}
	}
	return out
}

// value renders one member; false leaves it out.
func value(v reflect.Value, request, omitEC bool) (any, bool) {
	if v.Type() == timeType {
		t := time.Time(v.Interface().(wire.Time))
		if t.IsZero() {
			return nil, false
		}
		return t.UTC().Format(eventTimeLayout), true
	}
	switch v.Kind() {
	case reflect.String:
		return v.String(), v.String() != ""
	case reflect.Bool:
		return v.Bool(), !request || v.Bool()
	case reflect.Int, reflect.Int32, reflect.Int64:
		return v.Int(), v.Int() != 0
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil, false
		}
		return value(v.Elem(), request, omitEC)
	case reflect.Map:
		if v.IsNil() {
			return nil, false
		}
		return v.Interface(), true
	case reflect.Slice:
		if v.IsNil() || v.Type().Elem().Kind() == reflect.Uint8 {
			return nil, false
		}
		out := make([]any, 0, v.Len())
		for i := range v.Len() {
			if x, ok := value(v.Index(i), false, omitEC); ok {
				out = append(out, x)
			}
		}
		return out, true
	case reflect.Struct:
		f := render(v, request, omitEC)
		if f == nil {
			f = audit.Fields{}
		}
		return f, true
	}
	return nil, false
}

// rejected records a request the wire server refused before its
// operation ran: the identity is what authentication established, or for
// an authentication failure what the request claimed (its access key id,
// and the principal configured with it, if any).
func (s *Service) rejected(byKey map[string]Principal) func(ctx context.Context, c *wire.Call, hr *http.Request, err error) error {
	return func(ctx context.Context, c *wire.Call, hr *http.Request, err error) error {
		if s.trail == nil {
			return nil
		}
		name := c.Op
		op := s.op(name)
		if op == nil {
			name = sanitizeName(name)
		}
		ev := &audit.Event{
			EventVersion: audit.EventVersion, EventTime: audit.FormatTime(s.now()),
			EventSource: audit.KMSSource, EventName: name, SourceIPAddress: c.SourceIP, UserAgent: c.UserAgent,
			RequestID: c.RequestID, EventID: audit.NewID(), ReadOnly: op != nil && op.readOnly,
			EventType: audit.APICall, ManagementEvent: true, EventCategory: "Management", TLSDetails: tlsDetails(c.TLS, c.Host),
		}
		if caller, ok := c.Identity.(Caller); ok {
			ev.UserIdentity, ev.AWSRegion, ev.RecipientAccountID = identityOf(caller), caller.Region, caller.Account
		} else {
			keyID, region := claimedCredential(hr)
			ev.UserIdentity, ev.AWSRegion = audit.UserIdentity{Type: "Unknown", AccessKeyID: keyID}, region
			if p, ok := byKey[keyID]; ok {
				ev.UserIdentity = identityOf(Caller{AccessKeyID: p.AccessKeyID, Account: p.Account, PrincipalARN: p.ARN})
				ev.RecipientAccountID = p.Account
			}
		}
		ev.ErrorCode, ev.ErrorMessage = errorOf(err)
		if _, aerr := s.trail.Append(ctx, ev); aerr != nil {
			s.log.Error("audit record of a refused request not written: answering KMSInternalException", "request_id", c.RequestID, "error", aerr)
			return wire.Internal()
		}
		return nil
	}
}

// claimedCredential is the access key id and Region a request's signature
// names, valid or not; bounded, since nothing checked them.
func claimedCredential(r *http.Request) (keyID, region string) {
	if h := r.Header.Get("Authorization"); h != "" {
		if a, err := sigv4.ParseAuthorization(h); err == nil {
			return bounded(a.AccessKeyID), bounded(a.Region)
		}
		return "", ""
	}
	if q, err := sigv4.ParseQuery(r.URL.RawQuery); err == nil && q != nil {
		return bounded(q.AccessKeyID), bounded(q.Region)
	}
	return "", ""
}

func bounded(s string) string {
	if len(s) > 128 {
		s = s[:128]
	}
	return strings.ToValidUTF8(s, "?")
}

// sanitizeName is the eventName of a request for an unknown operation:
// what it asked for, if it looks like an operation name.
func sanitizeName(s string) string {
	if s == "" || len(s) > 64 {
		return "UnknownOperation"
	}
	for _, r := range s {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9') {
			return "UnknownOperation"
		}
	}
	return s
}

// serviceAction runs act, an action hsmkms takes on its own on a key or
// key store, recorded as AWS records its own (AwsServiceEvent): an intent
// record first (act does not run if it cannot be written), then the event
// with what act returns: its serviceEventDetails and responseElements, or
// its error (as errorCode and errorMessage; the detail goes to the log).
func (s *Service) serviceAction(ctx context.Context, name, account, region string, res []audit.Resource,
	act func() (details, response audit.Fields, err error)) error {
	return s.serviceActionFrom(ctx, audit.KMSSource, name, account, region, res, act)
}

// HierarchySource is the eventSource of the key hierarchy's internal
// actions (domain key rotation, material rewrapped or migrated): hsmkms's
// own, as AWS records none of its HSMs' key management.
const HierarchySource = "hsmkms.keystore"

// hierarchyAction runs act, an action on a key store's key hierarchy, as
// an internal action from HierarchySource (see serviceAction).
func (s *Service) hierarchyAction(ctx context.Context, name string, act func() (details audit.Fields, err error)) error {
	return s.serviceActionFrom(ctx, HierarchySource, name, "", "", nil, func() (audit.Fields, audit.Fields, error) {
		d, err := act()
		return d, nil, err
	})
}

// serviceActionFrom is serviceAction with the eventSource given.
func (s *Service) serviceActionFrom(ctx context.Context, source, name, account, region string, res []audit.Resource,
	act func() (details, response audit.Fields, err error)) error {
	if s.trail == nil {
		_, _, err := act()
		return err
	}
	ev := func() *audit.Event {
		return &audit.Event{
			EventVersion: audit.EventVersion, UserIdentity: audit.UserIdentity{AccountID: account, InvokedBy: audit.Internal},
			EventTime: audit.FormatTime(s.now()), EventSource: source, EventName: name, AWSRegion: region,
			SourceIPAddress: audit.Internal, UserAgent: audit.Internal, EventID: audit.NewID(), Resources: res,
			EventType: audit.ServiceEvent, ManagementEvent: true, RecipientAccountID: account, EventCategory: "Management",
		}
	}
	intent := ev()
	intent.EventType = intentEvent
	if _, err := s.trail.Append(ctx, intent); err != nil {
		return internalf("%s not performed: its audit intent was not written: %w", name, err)
	}
	details, response, err := act()
	done := ev()
	done.ServiceEventDetails = details
	if err != nil {
		done.ErrorCode, done.ErrorMessage = errorOf(err)
	} else {
		done.ResponseElements = response
	}
	if _, aerr := s.trail.Append(ctx, done); aerr != nil {
		s.log.Error("audit record of an internal action not written", "action", name, "error", aerr)
		err = errors.Join(err, aerr)
	}
	return err
}

// keyResource is a key as a record's resource.
func keyResource(arn, account string) []audit.Resource {
	return []audit.Resource{{AccountID: account, Type: "AWS::KMS::Key", ARN: arn}}
}
