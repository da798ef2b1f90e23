package store

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

const testConfigKey = "/coreos.com/network/config"

func TestParseConfigValid(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		name      string
		value     string
		network   string
		subnetLen int
		min, max  string
		count     int
		vni, port int
	}{
		{
			name:    "flannel defaults for a /16",
			value:   `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`,
			network: "10.5.0.0/16", subnetLen: 24, min: "10.5.1.0", max: "10.5.255.0", count: 255, vni: 1, port: 8472,
		},
		{
			name:    "a /8 still gets /24s",
			value:   `{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}`,
			network: "10.0.0.0/8", subnetLen: 24, min: "10.0.1.0", max: "10.255.255.0", count: 65535, vni: 1, port: 8472,
		},
		{
			name:    "a /22 is the smallest to get /24s",
			value:   `{"Network":"10.5.4.0/22","Backend":{"Type":"vxlan"}}`,
			network: "10.5.4.0/22", subnetLen: 24, min: "10.5.5.0", max: "10.5.7.0", count: 3, vni: 1, port: 8472,
		},
		{
			name:    "a /23 is split in four",
			value:   `{"Network":"10.5.4.0/23","Backend":{"Type":"vxlan"}}`,
			network: "10.5.4.0/23", subnetLen: 25, min: "10.5.4.128", max: "10.5.5.128", count: 3, vni: 1, port: 8472,
		},
		{
			name:    "a /24 is split in four",
			value:   `{"Network":"192.168.7.0/24","Backend":{"Type":"vxlan"}}`,
			network: "192.168.7.0/24", subnetLen: 26, min: "192.168.7.64", max: "192.168.7.192", count: 3, vni: 1, port: 8472,
		},
		{
			name:    "a /28 is the smallest network",
			value:   `{"Network":"10.9.0.0/28","Backend":{"Type":"vxlan"}}`,
			network: "10.9.0.0/28", subnetLen: 30, min: "10.9.0.4", max: "10.9.0.12", count: 3, vni: 1, port: 8472,
		},
		{
			name:    "explicit SubnetLen, defaults for the bounds",
			value:   `{"Network":"10.5.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan"}}`,
			network: "10.5.0.0/16", subnetLen: 26, min: "10.5.0.64", max: "10.5.255.192", count: 1023, vni: 1, port: 8472,
		},
		{
			name:    "SubnetLen of exactly ones+2",
			value:   `{"Network":"10.5.0.0/16","SubnetLen":18,"Backend":{"Type":"vxlan"}}`,
			network: "10.5.0.0/16", subnetLen: 18, min: "10.5.64.0", max: "10.5.192.0", count: 3, vni: 1, port: 8472,
		},
		{
			name:    "SubnetLen 30 in a big network",
			value:   `{"Network":"10.5.0.0/16","SubnetLen":30,"Backend":{"Type":"vxlan"}}`,
			network: "10.5.0.0/16", subnetLen: 30, min: "10.5.0.4", max: "10.5.255.252", count: 16383, vni: 1, port: 8472,
		},
		{
			name: "everything explicit",
			value: `{"Network":"10.5.0.0/16","SubnetLen":20,"SubnetMin":"10.5.32.0","SubnetMax":"10.5.64.0",
				"Backend":{"Type":"vxlan","VNI":4096,"Port":4789}}`,
			network: "10.5.0.0/16", subnetLen: 20, min: "10.5.32.0", max: "10.5.64.0", count: 3, vni: 4096, port: 4789,
		},
		{
			name:    "one subnet only",
			value:   `{"Network":"10.5.0.0/16","SubnetMin":"10.5.9.0","SubnetMax":"10.5.9.0","Backend":{"Type":"vxlan"}}`,
			network: "10.5.0.0/16", subnetLen: 24, min: "10.5.9.0", max: "10.5.9.0", count: 1, vni: 1, port: 8472,
		},
		{
			name:    "only SubnetMax given",
			value:   `{"Network":"10.5.0.0/16","SubnetMax":"10.5.20.0","Backend":{"Type":"vxlan"}}`,
			network: "10.5.0.0/16", subnetLen: 24, min: "10.5.1.0", max: "10.5.20.0", count: 20, vni: 1, port: 8472,
		},
		{
			name:    "largest VNI and port",
			value:   `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":16777215,"Port":65535}}`,
			network: "10.5.0.0/16", subnetLen: 24, min: "10.5.1.0", max: "10.5.255.0", count: 255, vni: 16777215, port: 65535,
		},
		{
			name:    "zero and null mean the default",
			value:   `{"Network":"10.5.0.0/16","SubnetLen":0,"SubnetMin":null,"SubnetMax":"","Backend":{"Type":"vxlan","VNI":null,"Port":0}}`,
			network: "10.5.0.0/16", subnetLen: 24, min: "10.5.1.0", max: "10.5.255.0", count: 255, vni: 1, port: 8472,
		},
		{
			// flannel's default VNI applies only to an absent field.
			name:    "explicit VNI 0 is VNI 0, as in flannel",
			value:   `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":0}}`,
			network: "10.5.0.0/16", subnetLen: 24, min: "10.5.1.0", max: "10.5.255.0", count: 255, vni: 0, port: 8472,
		},
		{
			// flannel decodes with encoding/json, which ignores case.
			name:    "field names in any case, as in flannel",
			value:   `{"network":"10.5.0.0/16","subnetlen":25,"BACKEND":{"type":"vxlan","vni":3}}`,
			network: "10.5.0.0/16", subnetLen: 25, min: "10.5.0.128", max: "10.5.255.128", count: 511, vni: 3, port: 8472,
		},
		{
			name: "flannel's other fields are ignored",
			value: `{"EnableIPv4":true,"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fd00:10::/48",
				"Backend":{"Type":"vxlan","VNI":7,"DirectRouting":true,"GBP":false,"MTU":1400,"MacPrefix":"0E:2A"}}`,
			network: "10.5.0.0/16", subnetLen: 24, min: "10.5.1.0", max: "10.5.255.0", count: 255, vni: 7, port: 8472,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig(testConfigKey, []byte(tt.value))
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			want := Config{
				Network:   netip.MustParsePrefix(tt.network),
				SubnetLen: tt.subnetLen,
				SubnetMin: a(tt.min),
				SubnetMax: a(tt.max),
				Backend:   Backend{Type: "vxlan", VNI: tt.vni, Port: tt.port},
			}
			if cfg != want {
				t.Errorf("ParseConfig =\n  %+v\nwant\n  %+v", cfg, want)
			}
			if n := cfg.SubnetCount(); n != tt.count {
				t.Errorf("SubnetCount = %d, want %d", n, tt.count)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	const net16 = `"Network":"10.5.0.0/16"`
	const vxlan = `"Backend":{"Type":"vxlan"}`
	tests := []struct {
		name  string
		value string
		field string // "" for the document as a whole
		says  string // a substring of the message
	}{
		{"not JSON", `Network: 10.5.0.0/16`, "", "not a JSON object"},
		{"empty", ``, "", "not a JSON object"},
		{"a JSON array", `["10.5.0.0/16"]`, "", "not a JSON object"},
		{"a JSON string", `"10.5.0.0/16"`, "", "not a JSON object"},
		{"trailing garbage", `{` + net16 + `,` + vxlan + `} x`, "", "not a JSON object"},

		{"Network missing", `{` + vxlan + `}`, "Network", "missing"},
		{"Network null", `{"Network":null,` + vxlan + `}`, "Network", "missing"},
		{"JSON null document", `null`, "Network", "missing"},
		{"Network a number", `{"Network":10,` + vxlan + `}`, "Network", "want a string"},
		{"Network an object", `{"Network":{"IP":"10.5.0.0"},` + vxlan + `}`, "Network", "want a string"},
		{"Network not a prefix", `{"Network":"10.5.0.0",` + vxlan + `}`, "Network", "not an IPv4 prefix"},
		{"Network garbage", `{"Network":"ten.five/16",` + vxlan + `}`, "Network", "not an IPv4 prefix"},
		{"Network empty", `{"Network":"",` + vxlan + `}`, "Network", "not an IPv4 prefix"},
		{"Network host bits", `{"Network":"10.5.0.1/16",` + vxlan + `}`, "Network", "did you mean 10.5.0.0/16"},
		{"Network IPv6", `{"Network":"fd00:10::/48",` + vxlan + `}`, "Network", "not an IPv4 prefix"},
		{"Network IPv4-mapped", `{"Network":"::ffff:10.5.0.0/112",` + vxlan + `}`, "Network", "not an IPv4 prefix"},
		{"Network /29", `{"Network":"10.5.0.0/29",` + vxlan + `}`, "Network", "too small"},
		{"Network /32", `{"Network":"10.5.0.1/32",` + vxlan + `}`, "Network", "too small"},

		{"SubnetLen 31", `{` + net16 + `,"SubnetLen":31,` + vxlan + `}`, "SubnetLen", "out of range"},
		{"SubnetLen 32", `{` + net16 + `,"SubnetLen":32,` + vxlan + `}`, "SubnetLen", "out of range"},
		{"SubnetLen negative", `{` + net16 + `,"SubnetLen":-24,` + vxlan + `}`, "SubnetLen", "out of range"},
		{"SubnetLen too short for four subnets", `{` + net16 + `,"SubnetLen":17,` + vxlan + `}`, "SubnetLen", "fewer than four subnets"},
		{"SubnetLen shorter than Network", `{` + net16 + `,"SubnetLen":8,` + vxlan + `}`, "SubnetLen", "fewer than four subnets"},
		{"SubnetLen in a /29", `{"Network":"10.5.0.0/29","SubnetLen":30,` + vxlan + `}`, "SubnetLen", "fewer than four subnets"},
		{"SubnetLen a string", `{` + net16 + `,"SubnetLen":"24",` + vxlan + `}`, "SubnetLen", "want an integer"},
		{"SubnetLen a fraction", `{` + net16 + `,"SubnetLen":24.5,` + vxlan + `}`, "SubnetLen", "want an integer"},

		{"SubnetMin outside", `{` + net16 + `,"SubnetMin":"10.6.1.0",` + vxlan + `}`, "SubnetMin", "not inside Network 10.5.0.0/16"},
		{"SubnetMin unaligned", `{` + net16 + `,"SubnetMin":"10.5.1.128",` + vxlan + `}`, "SubnetMin", "not on a /24 boundary"},
		{"SubnetMin garbage", `{` + net16 + `,"SubnetMin":"10.5.1",` + vxlan + `}`, "SubnetMin", "not an IPv4 address"},
		{"SubnetMin IPv6", `{` + net16 + `,"SubnetMin":"fd00::",` + vxlan + `}`, "SubnetMin", "not an IPv4 address"},
		{"SubnetMin a prefix", `{` + net16 + `,"SubnetMin":"10.5.1.0/24",` + vxlan + `}`, "SubnetMin", "not an IPv4 address"},
		{"SubnetMin a number", `{` + net16 + `,"SubnetMin":167051520,` + vxlan + `}`, "SubnetMin", "want a string"},
		{"SubnetMax outside", `{` + net16 + `,"SubnetMax":"10.6.0.0",` + vxlan + `}`, "SubnetMax", "not inside Network 10.5.0.0/16"},
		{"SubnetMax unaligned", `{` + net16 + `,"SubnetLen":26,"SubnetMax":"10.5.3.32",` + vxlan + `}`, "SubnetMax", "not on a /26 boundary"},
		{"SubnetMax below SubnetMin", `{` + net16 + `,"SubnetMin":"10.5.9.0","SubnetMax":"10.5.8.0",` + vxlan + `}`, "SubnetMax", "below SubnetMin 10.5.9.0"},
		{"SubnetMax below default SubnetMin", `{` + net16 + `,"SubnetMax":"10.5.0.0",` + vxlan + `}`, "SubnetMax", "below SubnetMin 10.5.1.0"},
		{"SubnetMax a bool", `{` + net16 + `,"SubnetMax":true,` + vxlan + `}`, "SubnetMax", "want a string"},

		{"Backend missing (flannel would use udp)", `{` + net16 + `}`, "Backend", "missing"},
		{"Backend null", `{` + net16 + `,"Backend":null}`, "Backend", "missing"},
		{"Backend a string", `{` + net16 + `,"Backend":"vxlan"}`, "Backend", "want an object"},
		{"Backend an array", `{` + net16 + `,"Backend":[{"Type":"vxlan"}]}`, "Backend", "want an object"},
		{"Backend.Type missing", `{` + net16 + `,"Backend":{"VNI":1}}`, "Backend.Type", "missing"},
		{"Backend.Type udp", `{` + net16 + `,"Backend":{"Type":"udp"}}`, "Backend.Type", `"udp" is not supported`},
		{"Backend.Type host-gw", `{` + net16 + `,"Backend":{"Type":"host-gw"}}`, "Backend.Type", `"host-gw" is not supported`},
		{"Backend.Type empty", `{` + net16 + `,"Backend":{"Type":""}}`, "Backend.Type", `"" is not supported`},
		{"Backend.Type a number", `{` + net16 + `,"Backend":{"Type":4}}`, "Backend.Type", "want a string"},
		{"VNI 2^24", `{` + net16 + `,"Backend":{"Type":"vxlan","VNI":16777216}}`, "Backend.VNI", "out of range"},
		{"VNI negative", `{` + net16 + `,"Backend":{"Type":"vxlan","VNI":-1}}`, "Backend.VNI", "out of range"},
		{"VNI a string", `{` + net16 + `,"Backend":{"Type":"vxlan","VNI":"1"}}`, "Backend.VNI", "want an integer"},
		{"Port 65536", `{` + net16 + `,"Backend":{"Type":"vxlan","Port":65536}}`, "Backend.Port", "not a UDP port"},
		{"Port negative", `{` + net16 + `,"Backend":{"Type":"vxlan","Port":-8472}}`, "Backend.Port", "not a UDP port"},
		{"Port a string", `{` + net16 + `,"Backend":{"Type":"vxlan","Port":"8472"}}`, "Backend.Port", "want an integer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig(testConfigKey, []byte(tt.value))
			if err == nil {
				t.Fatalf("ParseConfig(%s) = %+v, want an error", tt.value, cfg)
			}
			if cfg != (Config{}) {
				t.Errorf("ParseConfig returned %+v with its error, want the zero Config", cfg)
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T) is not a *ConfigError", err, err)
			}
			if ce.Key != testConfigKey || ce.Field != tt.field {
				t.Errorf("ConfigError{Key: %q, Field: %q}, want {%q, %q}", ce.Key, ce.Field, testConfigKey, tt.field)
			}
			if ce.Err == nil || errors.Unwrap(err) != ce.Err {
				t.Errorf("ConfigError does not unwrap to its cause: %#v", ce)
			}
			msg := err.Error()
			if !strings.Contains(msg, testConfigKey) {
				t.Errorf("error %q does not name the key %s", msg, testConfigKey)
			}
			if tt.field != "" && !strings.Contains(msg, `"`+tt.field+`"`) {
				t.Errorf("error %q does not name the field %q", msg, tt.field)
			}
			if !strings.Contains(msg, tt.says) {
				t.Errorf("error %q does not say %q", msg, tt.says)
			}
		})
	}
}

func TestConfigErrorWithoutField(t *testing.T) {
	err := &ConfigError{Key: "/k/config", Err: errors.New("boom")}
	if got, want := err.Error(), "store: network config /k/config: boom"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	err.Field = "Backend.VNI"
	if got, want := err.Error(), `store: network config /k/config: field "Backend.VNI": boom`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestKeys(t *testing.T) {
	for _, prefix := range []string{"/coreos.com/network", "/coreos.com/network/"} {
		if got, want := ConfigKey(prefix), "/coreos.com/network/config"; got != want {
			t.Errorf("ConfigKey(%q) = %q, want %q", prefix, got, want)
		}
		if got, want := SubnetsPrefix(prefix), "/coreos.com/network/subnets/"; got != want {
			t.Errorf("SubnetsPrefix(%q) = %q, want %q", prefix, got, want)
		}
	}
}

// waitConfigAsync runs WaitConfig in the background.
func waitConfigAsync(ctx context.Context, c *clientv3.Client, prefix string, log *zap.Logger) <-chan configResult {
	done := make(chan configResult, 1)
	go func() {
		cfg, err := WaitConfig(ctx, c, prefix, log, nil)
		done <- configResult{cfg, err}
	}()
	return done
}

type configResult struct {
	cfg Config
	err error
}

func expectConfig(t *testing.T, done <-chan configResult, want Config) {
	t.Helper()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("WaitConfig: %v", r.err)
		}
		if r.cfg != want {
			t.Fatalf("WaitConfig = %+v, want %+v", r.cfg, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitConfig did not return within 10s")
	}
}

func expectWaiting(t *testing.T, done <-chan configResult) {
	t.Helper()
	select {
	case r := <-done:
		t.Fatalf("WaitConfig returned (%+v, %v) while it should wait", r.cfg, r.err)
	default:
	}
}

const (
	absentMsg  = "waiting for the network config to be written to etcd"
	invalidMsg = "network config is invalid; waiting for it to be fixed"
)

func mustParseConfig(t testing.TB, v string) Config {
	t.Helper()
	cfg, err := ParseConfig(testConfigKey, []byte(v))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestWaitConfigPresent(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	const v = `{"Network":"10.5.0.0/16","SubnetLen":25,"Backend":{"Type":"vxlan","VNI":5}}`
	mustPut(t, c, testConfigKey, v)
	core, logs := observer.New(zapcore.DebugLevel)
	start := time.Now()
	cfg, err := WaitConfig(testCtx(t), c, "/coreos.com/network/", zap.New(core), nil)
	if err != nil {
		t.Fatalf("WaitConfig: %v", err)
	}
	if want := mustParseConfig(t, v); cfg != want {
		t.Errorf("WaitConfig = %+v, want %+v", cfg, want)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("WaitConfig took %v with the config in place", d)
	}
	if n := logs.FilterMessageSnippet("waiting").Len(); n != 0 {
		t.Errorf("WaitConfig logged %d waiting messages with the config in place", n)
	}
}

func TestWaitConfigAbsentThenWritten(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	core, logs := observer.New(zapcore.DebugLevel)
	// The first three watches wake WaitConfig with an empty response, as a
	// spurious wake-up would: it must look again without saying so again.
	hw := &hookWatcher{Watcher: c.Watcher}
	hw.hook = func(call int, ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
		if key != testConfigKey {
			t.Errorf("WaitConfig watches %q, want %q", key, testConfigKey)
		}
		if call > 3 {
			return nil
		}
		ch := make(chan clientv3.WatchResponse, 1)
		ch <- clientv3.WatchResponse{}
		return ch
	}
	done := waitConfigAsync(testCtx(t), withWatcher(c, hw), "/coreos.com/network", zap.New(core))

	eventually(t, 10*time.Second, func() bool { return hw.Calls() >= 4 }, "WaitConfig watched %d times, want 4", hw.Calls())
	expectWaiting(t, done)
	// Unrelated keys do not wake it into returning.
	mustPut(t, c, "/coreos.com/network/subnets/10.5.1.0-24", "{}")
	mustPut(t, c, "/coreos.com/network/configuration", `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
	expectWaiting(t, done)

	const v = `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`
	mustPut(t, c, testConfigKey, v)
	expectConfig(t, done, mustParseConfig(t, v))

	if n := logs.FilterMessage(absentMsg).Len(); n != 1 {
		t.Errorf("%q logged %d times, want exactly once", absentMsg, n)
	}
	for _, e := range logs.FilterMessage(absentMsg).All() {
		if e.ContextMap()["key"] != testConfigKey {
			t.Errorf("waiting message does not name the key: %v", e.ContextMap())
		}
	}
	if n := logs.FilterLevelExact(zapcore.ErrorLevel).Len(); n != 0 {
		t.Errorf("%d errors logged while the config was merely absent", n)
	}
}

func TestWaitConfigInvalidThenFixed(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	core, logs := observer.New(zapcore.DebugLevel)
	mustPut(t, c, testConfigKey, `{"Network":"10.5.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}`)
	done := waitConfigAsync(testCtx(t), c, "/coreos.com/network", zap.New(core))

	errorsLogged := func(n int) func() bool {
		return func() bool { return logs.FilterMessage(invalidMsg).Len() >= n }
	}
	eventually(t, 10*time.Second, errorsLogged(1), "no error logged for an invalid config")
	expectWaiting(t, done)

	// Another invalid value: another error, still waiting.
	mustPut(t, c, testConfigKey, `{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}`)
	eventually(t, 10*time.Second, errorsLogged(2), "no error logged for the second invalid config")
	expectWaiting(t, done)

	// Deleted: waiting for it to be written, said once.
	mustDelete(t, c, testConfigKey)
	eventually(t, 10*time.Second, func() bool { return logs.FilterMessage(absentMsg).Len() == 1 }, "absence not logged")
	expectWaiting(t, done)

	const v = `{"Network":"10.7.0.0/16","Backend":{"Type":"vxlan","Port":4789}}`
	mustPut(t, c, testConfigKey, v)
	expectConfig(t, done, mustParseConfig(t, v))

	errs := logs.FilterMessage(invalidMsg).All()
	if len(errs) != 2 {
		t.Fatalf("%d invalid-config errors logged, want 2 (one per bad value)", len(errs))
	}
	for i, field := range []string{`"SubnetLen"`, `"Backend.Type"`} {
		if errs[i].Level != zapcore.ErrorLevel {
			t.Errorf("invalid config logged at %v, want error", errs[i].Level)
		}
		msg, _ := errs[i].ContextMap()["error"].(string)
		if !strings.Contains(msg, testConfigKey) || !strings.Contains(msg, field) {
			t.Errorf("error %d %q does not name key %s and field %s", i, msg, testConfigKey, field)
		}
	}
	if n := logs.FilterMessage(absentMsg).Len(); n != 1 {
		t.Errorf("%q logged %d times, want once", absentMsg, n)
	}
}

func TestWaitConfigCanceled(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	core, logs := observer.New(zapcore.DebugLevel)
	ctx, cancel := context.WithCancel(testCtx(t))
	done := waitConfigAsync(ctx, c, "/coreos.com/network", zap.New(core))
	eventually(t, 10*time.Second, func() bool { return logs.FilterMessage(absentMsg).Len() == 1 }, "absence not logged")
	cancel()
	select {
	case r := <-done:
		if !errors.Is(r.err, context.Canceled) {
			t.Errorf("WaitConfig after cancel = (%+v, %v), want context.Canceled", r.cfg, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitConfig did not return after its context was canceled")
	}
}
