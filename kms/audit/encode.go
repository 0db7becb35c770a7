package audit

import (
	"encoding/json"
	"slices"
	"strconv"
	"unicode/utf8"
)

// A record is encoded by hand, not by encoding/json: every call writes
// one, and reflection-driven encoding was most of what auditing a call
// cost in CPU. The output is what encoding/json writes with HTML escaping
// off (Marshal's test compares the two).

func appendEvent(b []byte, ev *Event) ([]byte, error) {
	b = append(b, `{"eventVersion":`...)
	b = appendString(b, ev.EventVersion)
	b = append(b, `,"userIdentity":`...)
	b = appendIdentity(b, &ev.UserIdentity)
	b = append(b, `,"eventTime":`...)
	b = appendString(b, ev.EventTime)
	b = append(b, `,"eventSource":`...)
	b = appendString(b, ev.EventSource)
	b = append(b, `,"eventName":`...)
	b = appendString(b, ev.EventName)
	b = append(b, `,"awsRegion":`...)
	b = appendString(b, ev.AWSRegion)
	b = append(b, `,"sourceIPAddress":`...)
	b = appendString(b, ev.SourceIPAddress)
	b = append(b, `,"userAgent":`...)
	b = appendString(b, ev.UserAgent)
	if ev.ErrorCode != "" {
		b = append(b, `,"errorCode":`...)
		b = appendString(b, ev.ErrorCode)
	}
	if ev.ErrorMessage != "" {
		b = append(b, `,"errorMessage":`...)
		b = appendString(b, ev.ErrorMessage)
	}
	var err error
	b = append(b, `,"requestParameters":`...)
	if b, err = appendFields(b, ev.RequestParameters); err != nil {
		return nil, err
	}
	b = append(b, `,"responseElements":`...)
	if b, err = appendFields(b, ev.ResponseElements); err != nil {
		return nil, err
	}
	if len(ev.AdditionalEventData) > 0 {
		b = append(b, `,"additionalEventData":`...)
		if b, err = appendFields(b, ev.AdditionalEventData); err != nil {
			return nil, err
		}
	}
	if ev.RequestID != "" {
		b = append(b, `,"requestID":`...)
		b = appendString(b, ev.RequestID)
	}
	b = append(b, `,"eventID":`...)
	b = appendString(b, ev.EventID)
	b = append(b, `,"readOnly":`...)
	b = strconv.AppendBool(b, ev.ReadOnly)
	if len(ev.Resources) > 0 {
		b = append(b, `,"resources":[`...)
		for i, r := range ev.Resources {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"accountId":`...)
			b = appendString(b, r.AccountID)
			b = append(b, `,"type":`...)
			b = appendString(b, r.Type)
			b = append(b, `,"ARN":`...)
			b = appendString(b, r.ARN)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = append(b, `,"eventType":`...)
	b = appendString(b, ev.EventType)
	b = append(b, `,"managementEvent":`...)
	b = strconv.AppendBool(b, ev.ManagementEvent)
	if ev.RecipientAccountID != "" {
		b = append(b, `,"recipientAccountId":`...)
		b = appendString(b, ev.RecipientAccountID)
	}
	if len(ev.ServiceEventDetails) > 0 {
		b = append(b, `,"serviceEventDetails":`...)
		if b, err = appendFields(b, ev.ServiceEventDetails); err != nil {
			return nil, err
		}
	}
	b = append(b, `,"eventCategory":`...)
	b = appendString(b, ev.EventCategory)
	if t := ev.TLSDetails; t != nil {
		b = append(b, `,"tlsDetails":{"tlsVersion":`...)
		b = appendString(b, t.TLSVersion)
		b = append(b, `,"cipherSuite":`...)
		b = appendString(b, t.CipherSuite)
		if t.ClientProvidedHostHeader != "" {
			b = append(b, `,"clientProvidedHostHeader":`...)
			b = appendString(b, t.ClientProvidedHostHeader)
		}
		b = append(b, '}')
	}
	return append(b, '}'), nil
}

func appendIdentity(b []byte, u *UserIdentity) []byte {
	b = append(b, '{')
	first := true
	for _, m := range [...]struct{ name, v string }{
		{"type", u.Type}, {"arn", u.ARN}, {"accountId", u.AccountID}, {"accessKeyId", u.AccessKeyID},
		{"userName", u.UserName}, {"invokedBy", u.InvokedBy},
	} {
		if m.v == "" {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendString(b, m.name)
		b = append(b, ':')
		b = appendString(b, m.v)
	}
	return append(b, '}')
}

func appendFields(b []byte, f Fields) ([]byte, error) {
	if f == nil {
		return append(b, "null"...), nil
	}
	b = append(b, '{')
	var err error
	for i, x := range f {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, x.Name)
		b = append(b, ':')
		if b, err = appendValue(b, x.Value); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

// appendValue writes the values records hold; anything else goes through
// encoding/json, HTML escaping off.
func appendValue(b []byte, v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case string:
		return appendString(b, x), nil
	case bool:
		return strconv.AppendBool(b, x), nil
	case int:
		return strconv.AppendInt(b, int64(x), 10), nil
	case int64:
		return strconv.AppendInt(b, x, 10), nil
	case uint64:
		return strconv.AppendUint(b, x, 10), nil
	case Fields:
		return appendFields(b, x)
	case map[string]string:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, x[k])
		}
		return append(b, '}'), nil
	case []string:
		if x == nil {
			return append(b, "null"...), nil
		}
		b = append(b, '[')
		for i, s := range x {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, s)
		}
		return append(b, ']'), nil
	case []any:
		if x == nil {
			return append(b, "null"...), nil
		}
		b = append(b, '[')
		var err error
		for i, e := range x {
			if i > 0 {
				b = append(b, ',')
			}
			if b, err = appendValue(b, e); err != nil {
				return nil, err
			}
		}
		return append(b, ']'), nil
	}
	var buf jsonBuffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return append(b, buf[:len(buf)-1]...), nil
}

type jsonBuffer []byte

func (j *jsonBuffer) Write(p []byte) (int, error) { *j = append(*j, p...); return len(p), nil }

const hexDigits = "0123456789abcdef"

// appendString writes s as a JSON string as encoding/json does with HTML
// escaping off: control characters escaped, invalid UTF-8 as U+FFFD, and
// U+2028 and U+2029 escaped (JavaScript line terminators).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
