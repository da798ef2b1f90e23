package store

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"slices"
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
			// flannel's Networks (multi-cluster CIDRs) is kube-only.
			name:    "flannel's fields vtepd does not use are ignored",
			value:   `{"Network":"10.5.0.0/16","Networks":["10.6.0.0/16"],"EnableNFTables":true,"Backend":{"Type":"vxlan","VNI":7}}`,
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
				EnableIPv4: true,
				Network:    netip.MustParsePrefix(tt.network),
				SubnetLen:  tt.subnetLen,
				SubnetMin:  a(tt.min),
				SubnetMax:  a(tt.max),
				Backend:    Backend{Type: "vxlan", VNI: tt.vni, Port: tt.port},
			}
			if !sameConfig(cfg, want) {
				t.Errorf("ParseConfig =\n  %+v\nwant\n  %+v", cfg, want)
			}
			if n := cfg.SubnetCount(); n != tt.count {
				t.Errorf("SubnetCount = %d, want %d", n, tt.count)
			}
		})
	}
}

// sameConfig compares configs, which hold a slice (Warnings).
func sameConfig(a, b Config) bool { return reflect.DeepEqual(a, b) }

// TestParseConfigBackend: every field of flannel's vxlan backend on Linux is
// read; its Windows backend's fields and fields it does not have are
// accepted with a warning naming them.
func TestParseConfigBackend(t *testing.T) {
	cfg, err := ParseConfig(testConfigKey, []byte(`{"Network":"10.5.0.0/16",
		"Backend":{"Type":"vxlan","VNI":7,"DirectRouting":true,"GBP":true,"Learning":true,"MTU":1400,"MacPrefix":"0E-2A","Name":"vxlan0","Directrouting":true,"VNi":7,"Mtu":1400,"DirectRoutng":true,"Porrt":4789}}`))
	if err != nil {
		t.Fatal(err)
	}
	// Names match ignoring case, as encoding/json matches flanneld's
	// struct fields: Directrouting is DirectRouting again.
	if want := (Backend{Type: "vxlan", VNI: 7, Port: 8472, MTU: 1400, GBP: true, Learning: true, DirectRouting: true}); cfg.Backend != want {
		t.Errorf("Backend = %+v, want %+v", cfg.Backend, want)
	}
	want := []string{
		"Backend.MacPrefix ignored: it is a field of flannel's Windows vxlan backend",
		"Backend.Name ignored: it is a field of flannel's Windows vxlan backend",
		"Backend.DirectRoutng ignored: not a field of flannel's vxlan backend; check the spelling",
		"Backend.Porrt ignored: not a field of flannel's vxlan backend; check the spelling",
	}
	if !slices.Equal(cfg.Warnings, want) {
		t.Errorf("Warnings =\n  %s\nwant\n  %s", strings.Join(cfg.Warnings, "\n  "), strings.Join(want, "\n  "))
	}

	plain := mustParseConfig(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
	if plain.Backend != (Backend{Type: "vxlan", VNI: 1, Port: 8472}) || plain.Warnings != nil {
		t.Errorf("defaults: Backend %+v, Warnings %q; want MTU 0 (the underlay's), GBP, Learning, DirectRouting off, no warnings", plain.Backend, plain.Warnings)
	}
	// The MTU bounds: 50 bytes of VXLAN over IPv4 above IPv4's 68, and
	// with IPv6 70 over IPv6 above IPv6's 1280.
	for _, tt := range []struct {
		doc string
		mtu int
	}{
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":118}}`, 118},
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":65535}}`, 65535},
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":0}}`, 0},
		{`{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan","MTU":1350}}`, 1350},
		{`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan","MTU":9000}}`, 9000},
	} {
		if cfg := mustParseConfig(t, tt.doc); cfg.Backend.MTU != tt.mtu {
			t.Errorf("ParseConfig(%s).Backend.MTU = %d, want %d", tt.doc, cfg.Backend.MTU, tt.mtu)
		}
	}
}

// TestParseConfigDualStack: flannel's IPv6 fields, its defaults and its
// checks; an IPv6-only overlay (EnableIPv4 false).
func TestParseConfigDualStack(t *testing.T) {
	a, p := netip.MustParseAddr, netip.MustParsePrefix
	v4 := Config{EnableIPv4: true, Network: p("10.5.0.0/16"), SubnetLen: 24, SubnetMin: a("10.5.1.0"), SubnetMax: a("10.5.255.0")}
	vxlan := Backend{Type: "vxlan", VNI: 1, Port: 8472}
	tests := []struct {
		name, value string
		want        Config
		count       uint64 // IPv6 subnets
	}{
		{
			name:  "flannel's documented dual-stack config",
			value: `{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"2001:cafe:42::/56","Backend":{"Type":"vxlan"}}`,
			want: Config{EnableIPv4: true, EnableIPv6: true, Network: v4.Network, SubnetLen: 24, SubnetMin: v4.SubnetMin, SubnetMax: v4.SubnetMax,
				IPv6Network: p("2001:cafe:42::/56"), IPv6SubnetLen: 64, IPv6SubnetMin: a("2001:cafe:42:1::"), IPv6SubnetMax: a("2001:cafe:42:ff::"), Backend: vxlan},
			count: 255,
		},
		{
			name:  "IPv6-only",
			value: `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan"}}`,
			want: Config{EnableIPv6: true, IPv6Network: p("fd00:10::/48"), IPv6SubnetLen: 64,
				IPv6SubnetMin: a("fd00:10:0:1::"), IPv6SubnetMax: a("fd00:10:0:ffff::"), Backend: vxlan},
			count: 65535,
		},
		{
			name:  "a /62 is the smallest to get /64s",
			value: `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/62","Backend":{"Type":"vxlan"}}`,
			want: Config{EnableIPv6: true, IPv6Network: p("fd00:10::/62"), IPv6SubnetLen: 64,
				IPv6SubnetMin: a("fd00:10:0:1::"), IPv6SubnetMax: a("fd00:10:0:3::"), Backend: vxlan},
			count: 3,
		},
		{
			name:  "a /63 is split in four",
			value: `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/63","Backend":{"Type":"vxlan"}}`,
			want: Config{EnableIPv6: true, IPv6Network: p("fd00:10::/63"), IPv6SubnetLen: 65,
				IPv6SubnetMin: a("fd00:10:0:0:8000::"), IPv6SubnetMax: a("fd00:10:0:1:8000::"), Backend: vxlan},
			count: 3,
		},
		{
			name:  "a /124 is the smallest IPv6 network",
			value: `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/124","Backend":{"Type":"vxlan"}}`,
			want: Config{EnableIPv6: true, IPv6Network: p("fd00:10::/124"), IPv6SubnetLen: 126,
				IPv6SubnetMin: a("fd00:10::4"), IPv6SubnetMax: a("fd00:10::c"), Backend: vxlan},
			count: 3,
		},
		{
			name: "everything explicit",
			value: `{"EnableIPv4":true,"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fd00:10::/48","IPv6SubnetLen":80,
				"IPv6SubnetMin":"fd00:10:0:1::","IPv6SubnetMax":"fd00:10:0:1:2::","Backend":{"Type":"vxlan"}}`,
			want: Config{EnableIPv4: true, EnableIPv6: true, Network: v4.Network, SubnetLen: 24, SubnetMin: v4.SubnetMin, SubnetMax: v4.SubnetMax,
				IPv6Network: p("fd00:10::/48"), IPv6SubnetLen: 80, IPv6SubnetMin: a("fd00:10:0:1::"), IPv6SubnetMax: a("fd00:10:0:1:2::"), Backend: vxlan},
			count: 3,
		},
		{
			// A whole /0 of /126s: the count does not fit 64 bits.
			name:  "the largest IPv6 range",
			value: `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"::/0","IPv6SubnetLen":126,"Backend":{"Type":"vxlan"}}`,
			want: Config{EnableIPv6: true, IPv6Network: p("::/0"), IPv6SubnetLen: 126,
				IPv6SubnetMin: a("::4"), IPv6SubnetMax: a("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc"), Backend: vxlan},
			count: ^uint64(0),
		},
		{
			// flannel takes :: as a bound not given.
			name:  ":: is no bound, as in flannel",
			value: `{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fd00:10::/56","IPv6SubnetMin":"::","IPv6SubnetMax":null,"Backend":{"Type":"vxlan"}}`,
			want: Config{EnableIPv4: true, EnableIPv6: true, Network: v4.Network, SubnetLen: 24, SubnetMin: v4.SubnetMin, SubnetMax: v4.SubnetMax,
				IPv6Network: p("fd00:10::/56"), IPv6SubnetLen: 64, IPv6SubnetMin: a("fd00:10:0:1::"), IPv6SubnetMax: a("fd00:10:0:ff::"), Backend: vxlan},
			count: 255,
		},
		{
			name:  "the IPv6 fields of an IPv4-only overlay are ignored",
			value: `{"Network":"10.5.0.0/16","IPv6Network":"fd00:10::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}`,
			want: Config{EnableIPv4: true, Network: v4.Network, SubnetLen: 24, SubnetMin: v4.SubnetMin, SubnetMax: v4.SubnetMax, Backend: vxlan,
				Warnings: []string{"IPv6Network, IPv6SubnetLen ignored: EnableIPv6 is false"}},
		},
		{
			name:  "the IPv4 fields of an IPv6-only overlay are ignored",
			value: `{"EnableIPv4":false,"EnableIPv6":true,"Network":"10.5.0.0/16","SubnetMax":"10.5.9.0","IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan"}}`,
			want: Config{EnableIPv6: true, IPv6Network: p("fd00:10::/48"), IPv6SubnetLen: 64,
				IPv6SubnetMin: a("fd00:10:0:1::"), IPv6SubnetMax: a("fd00:10:0:ffff::"), Backend: vxlan,
				Warnings: []string{"Network, SubnetMax ignored: EnableIPv4 is false"}},
			count: 65535,
		},
		{
			name:  "field names in any case",
			value: `{"enableipv6":true,"network":"10.5.0.0/16","ipv6network":"fd00:10::/48","IPV6SUBNETLEN":56,"Backend":{"Type":"vxlan"}}`,
			want: Config{EnableIPv4: true, EnableIPv6: true, Network: v4.Network, SubnetLen: 24, SubnetMin: v4.SubnetMin, SubnetMax: v4.SubnetMax,
				IPv6Network: p("fd00:10::/48"), IPv6SubnetLen: 56, IPv6SubnetMin: a("fd00:10:0:100::"), IPv6SubnetMax: a("fd00:10:0:ff00::"), Backend: vxlan},
			count: 255,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig(testConfigKey, []byte(tt.value))
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			if !sameConfig(cfg, tt.want) {
				t.Errorf("ParseConfig =\n  %+v\nwant\n  %+v", cfg, tt.want)
			}
			f6, ok := cfg.IPv6()
			if ok != tt.want.IPv6Network.IsValid() || f6 != (FamilyConfig{tt.want.IPv6Network, tt.want.IPv6SubnetLen, tt.want.IPv6SubnetMin, tt.want.IPv6SubnetMax}) {
				t.Errorf("IPv6() = %+v, %v", f6, ok)
			}
			f4, ok := cfg.IPv4()
			if ok != tt.want.EnableIPv4 || f4 != (FamilyConfig{tt.want.Network, tt.want.SubnetLen, tt.want.SubnetMin, tt.want.SubnetMax}) {
				t.Errorf("IPv4() = %+v, %v", f4, ok)
			}
			if cfg.IPv6Network.IsValid() {
				if n := cfg.ipv6SubnetCount().uint64Sat(); n != tt.count {
					t.Errorf("IPv6 subnets: %d, want %d", n, tt.count)
				}
			}
			if !cfg.Network.IsValid() && cfg.SubnetCount() != 0 {
				t.Errorf("SubnetCount() = %d without IPv4", cfg.SubnetCount())
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

		{"MTU a string", `{` + net16 + `,"Backend":{"Type":"vxlan","MTU":"1400"}}`, "Backend.MTU", "want an integer"},
		{"MTU negative", `{` + net16 + `,"Backend":{"Type":"vxlan","MTU":-1}}`, "Backend.MTU", "out of range"},
		{"MTU below IPv4's", `{` + net16 + `,"Backend":{"Type":"vxlan","MTU":117}}`, "Backend.MTU", "want 0 (the underlay interface's MTU) or 118 to 65535"},
		{"MTU below IPv6's", `{` + net16 + `,"EnableIPv6":true,"IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan","MTU":1349}}`, "Backend.MTU", "or 1350 to 65535"},
		{"MTU too big", `{` + net16 + `,"Backend":{"Type":"vxlan","MTU":65536}}`, "Backend.MTU", "out of range"},
		{"GBP a string", `{` + net16 + `,"Backend":{"Type":"vxlan","GBP":"true"}}`, "Backend.GBP", "want true or false"},
		{"Learning a number", `{` + net16 + `,"Backend":{"Type":"vxlan","Learning":1}}`, "Backend.Learning", "want true or false"},
		{"DirectRouting an object", `{` + net16 + `,"Backend":{"Type":"vxlan","DirectRouting":{}}}`, "Backend.DirectRouting", "want true or false"},

		{"EnableIPv4 a string", `{"EnableIPv4":"false",` + net16 + `,` + vxlan + `}`, "EnableIPv4", "want true or false"},
		{"EnableIPv6 a number", `{"EnableIPv6":1,` + net16 + `,` + vxlan + `}`, "EnableIPv6", "want true or false"},
		{"no family", `{"EnableIPv4":false,` + net16 + `,` + vxlan + `}`, "EnableIPv4", "no network"},
		{"Network IPv6 points at IPv6Network", `{"Network":"fd00:10::/48",` + vxlan + `}`, "Network", "an IPv6 network goes in IPv6Network"},
		{"IPv6Network missing", `{"EnableIPv6":true,` + net16 + `,` + vxlan + `}`, "IPv6Network", "missing"},
		{"IPv6Network IPv4", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":"10.6.0.0/16",` + vxlan + `}`, "IPv6Network", "not an IPv6 prefix"},
		{"IPv6Network IPv4-mapped", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":"::ffff:10.6.0.0/112",` + vxlan + `}`, "IPv6Network", "not an IPv6 prefix"},
		{"IPv6Network garbage", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":"fd00:10::",` + vxlan + `}`, "IPv6Network", "not an IPv6 prefix"},
		{"IPv6Network a number", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":48,` + vxlan + `}`, "IPv6Network", "want a string"},
		{"IPv6Network host bits", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":"fd00:10::1/48",` + vxlan + `}`, "IPv6Network", "did you mean fd00:10::/48"},
		{"IPv6Network /125", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":"fd00:10::/125",` + vxlan + `}`, "IPv6Network", "too small"},
		{"IPv6SubnetLen 127", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":"fd00:10::/48","IPv6SubnetLen":127,` + vxlan + `}`, "IPv6SubnetLen", "want at most 126"},
		{"IPv6SubnetLen negative", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":"fd00:10::/48","IPv6SubnetLen":-64,` + vxlan + `}`, "IPv6SubnetLen", "out of range"},
		{"IPv6SubnetLen ones+1", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":"fd00:10::/48","IPv6SubnetLen":49,` + vxlan + `}`, "IPv6SubnetLen", "fewer than four subnets"},
		{"IPv6SubnetLen a string", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":"fd00:10::/48","IPv6SubnetLen":"64",` + vxlan + `}`, "IPv6SubnetLen", "want an integer"},
		{"IPv6SubnetMin outside", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":"fd00:10::/48","IPv6SubnetMin":"fd00:11::",` + vxlan + `}`, "IPv6SubnetMin", "not inside IPv6Network fd00:10::/48"},
		{"IPv6SubnetMin unaligned", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":"fd00:10::/48","IPv6SubnetMin":"fd00:10:0:1::1",` + vxlan + `}`, "IPv6SubnetMin", "not on a /64 boundary"},
		{"IPv6SubnetMin IPv4", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":"fd00:10::/48","IPv6SubnetMin":"10.5.1.0",` + vxlan + `}`, "IPv6SubnetMin", "not an IPv6 address"},
		{"IPv6SubnetMin a prefix", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":"fd00:10::/48","IPv6SubnetMin":"fd00:10:0:1::/64",` + vxlan + `}`, "IPv6SubnetMin", "not an IPv6 address"},
		{"IPv6SubnetMax outside", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":"fd00:10::/48","IPv6SubnetMax":"fd00:11::",` + vxlan + `}`, "IPv6SubnetMax", "not inside IPv6Network"},
		{"IPv6SubnetMax a bool", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":"fd00:10::/48","IPv6SubnetMax":true,` + vxlan + `}`, "IPv6SubnetMax", "want a string"},
		{"IPv6SubnetMax below Min", `{"EnableIPv6":true,` + net16 + `,"IPv6Network":"fd00:10::/48","IPv6SubnetMin":"fd00:10:0:9::","IPv6SubnetMax":"fd00:10:0:8::",` + vxlan + `}`,
			"IPv6SubnetMax", "below IPv6SubnetMin fd00:10:0:9::"},
		// The fields of a family that is off still have flanneld's types.
		{"ignored Network a number", `{"EnableIPv4":false,"EnableIPv6":true,"Network":10,"IPv6Network":"fd00:10::/48",` + vxlan + `}`, "Network", "want a string"},
		{"ignored IPv6SubnetLen a string", `{` + net16 + `,"IPv6SubnetLen":"64",` + vxlan + `}`, "IPv6SubnetLen", "want an integer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig(testConfigKey, []byte(tt.value))
			if err == nil {
				t.Fatalf("ParseConfig(%s) = %+v, want an error", tt.value, cfg)
			}
			if !sameConfig(cfg, Config{}) {
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
		if !sameConfig(r.cfg, want) {
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
	if want := mustParseConfig(t, v); !sameConfig(cfg, want) {
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
