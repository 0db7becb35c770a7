package wire

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// rawShape is model.json read again, independently of the parsed model
// Validate uses, so the expectations below are derived from the data and
// not from the code under test.
type rawShape struct {
	Type     string            `json:"type"`
	Members  []json.RawMessage `json:"members"`
	Required []string          `json:"required"`
	Min      *int64            `json:"min"`
	Max      *int64            `json:"max"`
	Enum     []string          `json:"enum"`
	Pattern  string            `json:"pattern"`
	Sens     bool              `json:"sensitive"`
	Member   string            `json:"member"`
}

type rawMember struct {
	Name      string `json:"name"`
	Shape     string `json:"shape"`
	Sensitive bool   `json:"sensitive"`
}

// valid values for shapes whose pattern a generated string would not meet.
var patternSamples = map[string]string{
	"AccountIdType": "111122223333", "AliasNameType": "alias/a", "BackingKeyIdType": "abcdef",
	"CloudHsmClusterIdType": "cluster-234567abcdefg", "GrantNameType": "g", "KeyMaterialDescriptionType": "d",
	"MarkerType": "m", "PolicyNameType": "default", "PolicyType": "{}", "PrincipalIdType": "arn:aws:iam::111122223333:root",
	"RegionType": "us-east-1", "XksKeyIdType": "x", "XksProxyAuthenticationAccessKeyIdType": "ABCDEFGHIJKLMNOP",
	"XksProxyAuthenticationRawSecretAccessKeyType": "abcdefghijklmnopqrstuvwxyzabcdefghijklmn", "XksProxyUriEndpointType": "https://x",
	"XksProxyUriPathType": "/kms/xks/v1", "XksProxyVpcEndpointServiceNameType": "com.amazonaws.vpce.us-east-1.vpce-svc-0",
}

// TestEveryConstraint: for every operation of the model and every
// top-level member with a constraint (required, length, range, enum), a
// request violating exactly that constraint gets AWS's ValidationException
// with AWS's message.
func TestEveryConstraint(t *testing.T) {
	var m struct {
		Operations map[string]string    `json:"operations"`
		Shapes     map[string]*rawShape `json:"shapes"`
	}
	require.NoError(t, json.Unmarshal(modelJSON, &m))

	// validValue is a value meeting every constraint of shape name.
	var validValue func(name string) any
	validValue = func(name string) any {
		s := m.Shapes[name]
		switch s.Type {
		case "string":
			if v, ok := patternSamples[name]; ok {
				return v
			}
			if len(s.Enum) > 0 {
				return s.Enum[0]
			}
			n := int64(1)
			if s.Min != nil && *s.Min > n {
				n = *s.Min
			}
			return strings.Repeat("a", int(n))
		case "blob":
			n := int64(1)
			if s.Min != nil && *s.Min > n {
				n = *s.Min
			}
			return base64.StdEncoding.EncodeToString(make([]byte, n))
		case "integer", "long":
			if s.Min != nil {
				return *s.Min
			}
			return 1
		case "boolean":
			return false
		case "list":
			return []any{validValue(s.Member)}
		case "map":
			return map[string]any{}
		case "structure":
			obj := map[string]any{}
			for _, raw := range s.Members {
				var mb rawMember
				json.Unmarshal(raw, &mb)
				for _, r := range s.Required {
					if r == mb.Name {
						obj[mb.Name] = validValue(mb.Shape)
					}
				}
			}
			return obj
		}
		return nil
	}

	checked := 0
	for op, input := range m.Operations {
		in := m.Shapes[input]
		base := validValue(input).(map[string]any)
		baseBody, _ := json.Marshal(base)
		require.Nil(t, Validate(op, baseBody), "%s: the valid request %s", op, baseBody)

		for _, raw := range in.Members {
			var mb rawMember
			require.NoError(t, json.Unmarshal(raw, &mb))
			s := m.Shapes[mb.Shape]
			path := strings.ToLower(mb.Name[:1]) + mb.Name[1:]
			hidden := mb.Sensitive || s.Sens || s.Type == "blob" || s.Type == "list" || s.Type == "map"
			type violation struct {
				value any
				msg   string
			}
			var vs []violation
			shown := func(v any) string {
				if hidden {
					return "Value at '" + path + "'"
				}
				return fmt.Sprintf("Value '%v' at '%s'", v, path)
			}
			for _, r := range in.Required {
				if r == mb.Name {
					vs = append(vs, violation{nil, "Value null at '" + path + "' failed to satisfy constraint: Member must not be null"})
				}
			}
			switch s.Type {
			case "string":
				if s.Min != nil && *s.Min > 0 && len(s.Enum) == 0 && s.Pattern == "" {
					v := strings.Repeat("a", int(*s.Min-1))
					vs = append(vs, violation{v, fmt.Sprintf("%s failed to satisfy constraint: Member must have length greater than or equal to %d", shown(v), *s.Min)})
				}
				if s.Max != nil && len(s.Enum) == 0 && s.Pattern == "" {
					v := strings.Repeat("a", int(*s.Max+1))
					vs = append(vs, violation{v, fmt.Sprintf("%s failed to satisfy constraint: Member must have length less than or equal to %d", shown(v), *s.Max)})
				}
				if len(s.Enum) > 0 {
					order := s.Enum // the model's, unless AWS's own order was recorded
					if aws, ok := awsEnumOrder[mb.Shape]; ok {
						order = aws
					}
					vs = append(vs, violation{"NOT_A_VALUE", fmt.Sprintf("%s failed to satisfy constraint: Member must satisfy enum value set: [%s]", shown("NOT_A_VALUE"), strings.Join(order, ", "))})
				}
			case "blob":
				if s.Max != nil {
					v := base64.StdEncoding.EncodeToString(make([]byte, *s.Max+1))
					vs = append(vs, violation{v, fmt.Sprintf("%s failed to satisfy constraint: Member must have length less than or equal to %d", shown(v), *s.Max)})
				}
				if s.Min != nil && *s.Min > 0 {
					vs = append(vs, violation{"", fmt.Sprintf("%s failed to satisfy constraint: Member must have length greater than or equal to %d", shown(""), *s.Min)})
				}
			case "integer", "long":
				if s.Min != nil {
					vs = append(vs, violation{*s.Min - 1, fmt.Sprintf("%s failed to satisfy constraint: Member must have value greater than or equal to %d", shown(*s.Min-1), *s.Min)})
				}
				if s.Max != nil {
					vs = append(vs, violation{*s.Max + 1, fmt.Sprintf("%s failed to satisfy constraint: Member must have value less than or equal to %d", shown(*s.Max+1), *s.Max)})
				}
			case "list":
				if s.Max != nil {
					items := make([]any, *s.Max+1)
					for i := range items {
						items[i] = validValue(s.Member)
					}
					vs = append(vs, violation{items, fmt.Sprintf("%s failed to satisfy constraint: Member must have length less than or equal to %d", shown(nil), *s.Max)})
				}
			}
			for _, v := range vs {
				body := map[string]any{}
				for k, x := range base {
					body[k] = x
				}
				if v.value == nil {
					delete(body, mb.Name)
				} else {
					body[mb.Name] = v.value
				}
				b, _ := json.Marshal(body)
				err := Validate(op, b)
				require.NotNil(t, err, "%s.%s: %s", op, mb.Name, v.msg)
				require.Equal(t, Validation, err.Type, "%s.%s", op, mb.Name)
				require.Equal(t, "1 validation error detected: "+v.msg, err.Message, "%s.%s", op, mb.Name)
				checked++
			}
		}
	}
	t.Logf("%d constraint violations checked across %d operations", checked, len(m.Operations))
	require.Greater(t, checked, 200)
}
