package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// referenceValidate is Validate as it was before it parsed with jsontext:
// encoding/json into a tree of any, walked by shape. The tests check the
// new one against it, message for message.
//
// It checks a request body against op's input shape in the KMS model,
// the way AWS does before an operation runs: malformed JSON, a value of the
// wrong JSON type, or a null inside a list or map (the model's collections
// are all dense) is a SerializationException; missing required
// members and values outside their length, range, enum or pattern are one
// ValidationException listing every violation in AWS's words. Members the
// model does not know are ignored, as AWS ignores them. An operation not in
// the model is not validated.
func referenceValidate(op string, body []byte) *Error {
	in, ok := kmsModel.inputs[op]
	if !ok {
		return nil
	}
	var v any
	if len(bytes.TrimSpace(body)) == 0 {
		v = map[string]any{}
	} else {
		if err := json.Unmarshal(body, &v); err != nil {
			return serialization("Malformed request body: not a single JSON document.")
		}
	}
	if _, ok := v.(map[string]any); !ok {
		return serialization("Start of structure or map found where not expected.")
	}
	var c refChecker
	c.walk(in, v, "")
	if c.serial != nil {
		return c.serial
	}
	switch len(c.errs) {
	case 0:
		return nil
	case 1:
		return Errorf(Validation, "1 validation error detected: %s", c.errs[0])
	}
	return Errorf(Validation, "%d validation errors detected: %s", len(c.errs), strings.Join(c.errs, "; "))
}

type refChecker struct {
	errs   []string
	serial *Error
}

func (c *refChecker) fail(value, path, constraint string) {
	if value == "" {
		c.errs = append(c.errs, fmt.Sprintf("Value at '%s' failed to satisfy constraint: Member must %s", path, constraint))
		return
	}
	c.errs = append(c.errs, fmt.Sprintf("Value %s at '%s' failed to satisfy constraint: Member must %s", value, path, constraint))
}

func (c *refChecker) wrongType(want string) {
	if c.serial == nil {
		c.serial = serialization(want)
	}
}

// walk checks v against s. shown is how the value appears in messages
// ("" for values AWS does not echo: blobs, containers, sensitive data).
func (c *refChecker) walk(s *shape, v any, path string) {
	c.check(s, v, path, false)
}

func (c *refChecker) check(s *shape, v any, path string, sensitive bool) {
	if c.serial != nil {
		return
	}
	sensitive = sensitive || s.Sensitive
	switch s.Type {
	case "structure":
		obj, ok := v.(map[string]any)
		if !ok {
			c.wrongType("Expected a JSON object at '" + path + "'.")
			return
		}
		for i := range s.Members {
			m := &s.Members[i]
			p := m.path
			if path != "" {
				p = path + "." + m.path
			}
			mv, present := obj[m.Name]
			if !present || mv == nil {
				if s.required[m.Name] {
					c.errs = append(c.errs, fmt.Sprintf("Value null at '%s' failed to satisfy constraint: Member must not be null", p))
				}
				continue
			}
			c.check(s.children[i], mv, p, sensitive || m.Sensitive)
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			c.wrongType("Expected a JSON string at '" + path + "'.")
			return
		}
		shown := ""
		if !sensitive {
			shown = "'" + str + "'"
		}
		c.length(s, int64(utf8.RuneCountInString(str)), shown, path)
		if s.enum != nil && !s.enum[str] {
			c.fail(shown, path, "satisfy enum value set: "+s.enumText)
		}
		if s.re != nil && !s.re.MatchString(str) {
			c.fail(shown, path, "satisfy regular expression pattern: "+s.Pattern)
		}
	case "blob":
		str, ok := v.(string)
		if !ok {
			c.wrongType("Expected a base64-encoded JSON string at '" + path + "'.")
			return
		}
		n, err := base64Len([]byte(str))
		if err != nil {
			c.wrongType("Invalid base64 data at '" + path + "'.")
			return
		}
		c.length(s, int64(n), "", path)
	case "integer", "long":
		f, ok := v.(float64)
		if !ok {
			c.wrongType("Expected a JSON number at '" + path + "'.")
			return
		}
		if f != math.Trunc(f) || math.Abs(f) > 1<<53 || (s.Type == "integer" && (f < -1<<31 || f > 1<<31-1)) {
			c.wrongType("Expected an integer at '" + path + "'.")
			return
		}
		n := int64(f)
		shown := "'" + strconv.FormatInt(n, 10) + "'"
		if s.Min != nil && n < *s.Min {
			c.fail(shown, path, fmt.Sprintf("have value greater than or equal to %d", *s.Min))
		}
		if s.Max != nil && n > *s.Max {
			c.fail(shown, path, fmt.Sprintf("have value less than or equal to %d", *s.Max))
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			c.wrongType("Expected a JSON boolean at '" + path + "'.")
		}
	case "timestamp":
		if _, ok := v.(float64); !ok {
			c.wrongType("Expected a timestamp in epoch seconds at '" + path + "'.")
		}
	case "list":
		list, ok := v.([]any)
		if !ok {
			c.wrongType("Expected a JSON array at '" + path + "'.")
			return
		}
		c.length(s, int64(len(list)), "", path)
		for i, item := range list {
			p := fmt.Sprintf("%s.%d.member", path, i+1)
			if item == nil {
				// Every list of the KMS model is dense: a null element is
				// malformed JSON for the shape, not a missing value.
				c.wrongType("Unexpected null at '" + p + "'.")
				return
			}
			c.check(s.elem, item, p, sensitive)
		}
	case "map":
		obj, ok := v.(map[string]any)
		if !ok {
			c.wrongType("Expected a JSON object at '" + path + "'.")
			return
		}
		c.length(s, int64(len(obj)), "", path)
		key, val := kmsModel.Shapes[s.Key], kmsModel.Shapes[s.Value]
		for k, item := range obj {
			c.check(key, k, path+".key", sensitive)
			if item == nil {
				// Dense, as the lists: a null value would otherwise reach
				// the operation as "" (an encryption context that
				// differs from the one the client meant).
				c.wrongType("Unexpected null at '" + path + "." + k + "'.")
				return
			}
			c.check(val, item, path+"."+k, sensitive)
		}
	}
}

func (c *refChecker) length(s *shape, n int64, shown, path string) {
	if s.Min != nil && n < *s.Min {
		c.fail(shown, path, fmt.Sprintf("have length greater than or equal to %d", *s.Min))
	}
	if s.Max != nil && n > *s.Max {
		c.fail(shown, path, fmt.Sprintf("have length less than or equal to %d", *s.Max))
	}
}
