package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"time"
)

// EventVersion is the CloudTrail record format version hsmkms writes.
const EventVersion = "1.11"

// Event is one CloudTrail record, field for field as CloudTrail writes
// KMS's: names, order and meaning. RequestParameters and ResponseElements
// are null when an operation has none to log; they never hold plaintext,
// ciphertext, data keys, signatures, MACs, passwords or secrets (the
// builder in kms decides what goes in, per operation).
type Event struct {
	EventVersion        string       `json:"eventVersion"`
	UserIdentity        UserIdentity `json:"userIdentity"`
	EventTime           string       `json:"eventTime"`
	EventSource         string       `json:"eventSource"`
	EventName           string       `json:"eventName"`
	AWSRegion           string       `json:"awsRegion"`
	SourceIPAddress     string       `json:"sourceIPAddress"`
	UserAgent           string       `json:"userAgent"`
	ErrorCode           string       `json:"errorCode,omitempty"`
	ErrorMessage        string       `json:"errorMessage,omitempty"`
	RequestParameters   Fields       `json:"requestParameters"`
	ResponseElements    Fields       `json:"responseElements"`
	AdditionalEventData Fields       `json:"additionalEventData,omitempty"`
	RequestID           string       `json:"requestID,omitempty"`
	EventID             string       `json:"eventID"`
	ReadOnly            bool         `json:"readOnly"`
	Resources           []Resource   `json:"resources,omitempty"`
	EventType           string       `json:"eventType"`
	ManagementEvent     bool         `json:"managementEvent"`
	RecipientAccountID  string       `json:"recipientAccountId,omitempty"`
	ServiceEventDetails Fields       `json:"serviceEventDetails,omitempty"`
	EventCategory       string       `json:"eventCategory"`
	TLSDetails          *TLSDetails  `json:"tlsDetails,omitempty"`

	// Time is EventTime as a time, for the trail's OnDurable readers; not
	// written.
	Time time.Time `json:"-"`
}

// UserIdentity is who made the call (or, for AwsServiceEvent records, the
// account and "AWS Internal").
type UserIdentity struct {
	Type        string `json:"type,omitempty"`
	ARN         string `json:"arn,omitempty"`
	AccountID   string `json:"accountId,omitempty"`
	AccessKeyID string `json:"accessKeyId,omitempty"`
	UserName    string `json:"userName,omitempty"`
	InvokedBy   string `json:"invokedBy,omitempty"`
}

// Resource is a resource the call acted on.
type Resource struct {
	AccountID string `json:"accountId"`
	Type      string `json:"type"`
	ARN       string `json:"ARN"`
}

// TLSDetails is how the call reached hsmkms.
type TLSDetails struct {
	TLSVersion               string `json:"tlsVersion"`
	CipherSuite              string `json:"cipherSuite"`
	ClientProvidedHostHeader string `json:"clientProvidedHostHeader,omitempty"`
}

// Event types and sources.
const (
	APICall      = "AwsApiCall"
	ServiceEvent = "AwsServiceEvent"
	// KMSSource is the eventSource of KMS's events.
	KMSSource = "kms.amazonaws.com"
	// TrailSource is the eventSource of the trail's own records (started,
	// stopped, files expired): not KMS events, so not KMS's source.
	TrailSource = "hsmkms.audit"
	// Internal is what CloudTrail writes where AWS itself acted.
	Internal = "AWS Internal"
)

// Field is one member of a JSON object whose order is kept.
type Field struct {
	Name  string
	Value any
}

// Fields is a JSON object written in the order given; nil is null.
type Fields []Field

// Add appends a member.
func (f *Fields) Add(name string, v any) { *f = append(*f, Field{name, v}) }

// Get returns the value of the member name.
func (f Fields) Get(name string) (any, bool) {
	for _, x := range f {
		if x.Name == name {
			return x.Value, true
		}
	}
	return nil, false
}

func (f Fields) MarshalJSON() ([]byte, error) { return appendFields(nil, f) }

// UnmarshalJSON reads an object (in its order) or null; nested values are
// what encoding/json makes of them.
func (f *Fields) UnmarshalJSON(data []byte) error {
	if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		*f = nil
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return errors.New("audit: not a JSON object")
	}
	out := Fields{}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return err
		}
		name, _ := k.(string)
		var v any
		if err := dec.Decode(&v); err != nil {
			return err
		}
		out = append(out, Field{name, v})
	}
	*f = out
	return nil
}

// Marshal encodes ev as one line of JSON, without the chain members the
// trail adds and without a newline.
func Marshal(ev *Event) ([]byte, error) { return appendEvent(make([]byte, 0, 1024), ev) }
