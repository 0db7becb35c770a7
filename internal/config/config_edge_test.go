package config

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestEdgeConfig covers the limits and regions sections: defaults, and
// errors that name the YAML path.
func TestEdgeConfig(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		cfg, err := ParseConfig([]byte(validConfig), "/etc/hsmkms")
		require.NoError(t, err)
		assert.Equal(t, kms.DefaultMaxInFlight, cfg.Limits.MaxInFlight)
		assert.Equal(t, kms.DefaultQueueWait, cfg.Limits.Wait())
		assert.Equal(t, store.DefaultKeyCacheSize, cfg.Limits.CachedKeys)
		assert.Equal(t, kms.CommercialRegions(), cfg.Regions)
	})
	t.Run("set", func(t *testing.T) {
		doc := validConfig + "limits:\n  max_in_flight: 64\n  queue_wait: 0s\n  cached_keys: 131072\nregions: [eu-west-1, eu-onprem-1]\n"
		cfg, err := ParseConfig([]byte(doc), "/etc/hsmkms")
		require.NoError(t, err)
		assert.Equal(t, 64, cfg.Limits.MaxInFlight)
		assert.Equal(t, 131072, cfg.Limits.CachedKeys)
		assert.Equal(t, time.Duration(0), cfg.Limits.Wait())
		assert.Equal(t, []string{"eu-west-1", "eu-onprem-1"}, cfg.Regions)
	})
	lines := strings.Count(validConfig, "\n")
	line := func(n int) string { return "(line " + strconv.Itoa(lines+n) + ")" }
	for _, tc := range []struct{ name, add, want string }{
		{"unknown limit", "limits:\n  max_inflight: 3\n", "limits.max_inflight " + line(2) + ": unknown key"},
		{"in flight not a number", "limits:\n  max_in_flight: many\n", "limits.max_in_flight " + line(2) + ": must be an integer"},
		{"in flight negative", "limits:\n  max_in_flight: -1\n", "limits.max_in_flight: must be between 1 and 4096 (absent for the default, 16)"},
		{"in flight too many", "limits:\n  max_in_flight: 5000\n", "limits.max_in_flight: must be between 1 and 4096"},
		{"wait a bare number", "limits:\n  queue_wait: 50\n", "limits.queue_wait " + line(2) + ": must be a duration such as 50ms or 0s"},
		{"wait garbled", "limits:\n  queue_wait: soon\n", `limits.queue_wait: "soon" is not a duration such as 50ms or 0s`},
		{"wait too long", "limits:\n  queue_wait: 1m\n", "limits.queue_wait: must be between 0s and 10s (got 1m0s)"},
		{"cached keys none", "limits:\n  cached_keys: -1\n", "limits.cached_keys: must be between 1 and 10000000 (absent for the default, 16384)"},
		{"cached keys too many", "limits:\n  cached_keys: 20000000\n", "limits.cached_keys: must be between 1 and 10000000"},
		{"wait negative", "limits:\n  queue_wait: -1s\n", "limits.queue_wait: must be between 0s and 10s (got -1s)"},
		{"regions not a list", "regions: us-east-1\n", "regions " + line(1) + ": must be a list"},
		{"region not a string", "regions: [{name: us-east-1}]\n", "regions[0] " + line(1) + ": must be a string"},
		{"regions empty", "regions: []\n", "regions: at least one is required"},
		{"region malformed", "regions: [us-east-1, US_WEST_2]\n", `regions[1]: "US_WEST_2" is not a Region name such as eu-west-1`},
		{"region twice", "regions: [us-east-1, eu-west-1, us-east-1]\n", "regions[2]: us-east-1 is listed twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(validConfig+tc.add), "/etc/hsmkms")
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}
