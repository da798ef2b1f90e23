package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// The fuzz targets of the parsers of what anyone with write access to etcd
// can store. Their seeds are in testdata/fuzz/<target>/: flannel's own keys
// and values, the bad inputs of this package's tests, and what fuzzing
// found. Plain `go test` runs the seeds; `make fuzz` fuzzes each target.

// FuzzParseSubnetKey: an accepted key is flannel's form of the subnet it
// names, and that subnet's SubnetKey parses back to it; a rejected one gets
// an error that quotes it.
func FuzzParseSubnetKey(f *testing.F) {
	f.Fuzz(func(t *testing.T, key string) {
		p, err := ParseSubnetKey(key)
		if err != nil {
			if p != (netip.Prefix{}) {
				t.Errorf("ParseSubnetKey(%q) returned %s with its error", key, p)
			}
			if !strings.Contains(err.Error(), strconv.Quote(key)) {
				t.Errorf("ParseSubnetKey(%q) error %q does not quote the key", key, err)
			}
			return
		}
		checkSubnetFromKey(t, key, p)
	})
}

// checkSubnetFromKey checks a subnet that ParseSubnetKey accepted from key.
func checkSubnetFromKey(t *testing.T, key string, p netip.Prefix) {
	t.Helper()
	if !p.IsValid() || p != p.Masked() || p.Bits() == 0 {
		t.Fatalf("ParseSubnetKey(%q) = %s: not a subnet's own prefix", key, p)
	}
	// flannel's MakeSubnetKey writes <address>-<length>, then for a
	// dual-stack host &<IPv6 part>; its ParseSubnetKey takes the length
	// with leading zeros, so such a key names the same subnet for both.
	form := `^` + regexp.QuoteMeta(p.Addr().String()) + `-0*` + strconv.Itoa(p.Bits()) + `(&|$)`
	if !regexp.MustCompile(form).MatchString(key) {
		t.Errorf("ParseSubnetKey(%q) = %s, but the key is not %s-%d in flannel's form", key, p, p.Addr(), p.Bits())
	}
	if back, err := ParseSubnetKey(SubnetKey(p)); err != nil || back != p {
		t.Errorf("ParseSubnetKey(%q) = %s, but ParseSubnetKey(SubnetKey(%s) = %q) = %s, %v", key, p, p, SubnetKey(p), back, err)
	}
}

// FuzzParseLeaseKey: an accepted key is flannel's form of the subnets it
// names (what flannel's ParseSubnetKey reads from it too), and LeaseKey of
// them parses back to them; a rejected one gets an error that quotes it,
// and a key flannel writes for subnets is never rejected.
func FuzzParseLeaseKey(f *testing.F) {
	f.Fuzz(func(t *testing.T, key string) {
		v4, v6, err := ParseLeaseKey(key)
		f4, f6, fok := flannelParseSubnetKey(key)
		if err != nil {
			if v4 != (netip.Prefix{}) || v6 != (netip.Prefix{}) {
				t.Errorf("ParseLeaseKey(%q) returned %s, %s with its error", key, v4, v6)
			}
			if !strings.Contains(err.Error(), strconv.Quote(key)) {
				t.Errorf("ParseLeaseKey(%q) error %q does not quote the key", key, err)
			}
			// What flannel would write for the subnets it reads here
			// (its own keys) vtepd reads too.
			if fok && f4.Masked() == f4 && f6.Masked() == f6 && !f6.Addr().Is4In6() && f6.Bits() != 0 &&
				(f4.Bits() > 0 || f4.Addr().IsUnspecified() && f6.IsValid()) {
				if own := LeaseKey(noV4(f4), f6); own == key {
					t.Errorf("ParseLeaseKey(%q) rejects flannel's key for %s, %s: %v", key, f4, f6, err)
				}
			}
			return
		}
		checkLeaseKey(t, key, v4, v6)
		// flannel reads the same subnets from it; it only refuses /32s,
		// which vtepd has always taken.
		if v4.Bits() != 32 && (!fok || noV4(f4) != v4 || f6 != v6) {
			t.Errorf("ParseLeaseKey(%q) = %s, %s, but flannel's ParseSubnetKey reads %s, %s (ok %v)", key, v4, v6, f4, f6, fok)
		}
		if p, err := ParseSubnetKey(key); v4.IsValid() != (err == nil) || p != v4 {
			t.Errorf("ParseLeaseKey(%q) = %s, %s, but ParseSubnetKey = %s, %v", key, v4, v6, p, err)
		}
	})
}

// noV4 is flannel's IPv4 subnet of a lease key as vtepd represents it:
// flannel's zero IP4Net (an IPv6-only lease) is no IPv4 part.
func noV4(p netip.Prefix) netip.Prefix {
	if p.Bits() == 0 && p.Addr().IsUnspecified() {
		return netip.Prefix{}
	}
	return p
}

// flannelSubnetRegex is flannel's (pkg/subnet/subnet.go), applied by its
// ParseSubnetKey to the whole etcd key: anchored only at the end.
var flannelSubnetRegex = regexp.MustCompile(`(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$`)

// flannelParseSubnetKey is how flannel's ParseSubnetKey reads a lease key:
// its regular expression, net.ParseIP, and lengths of at most 31 and 127
// bits. v6 is invalid for a key without an IPv6 part.
func flannelParseSubnetKey(s string) (v4, v6 netip.Prefix, ok bool) {
	parts := flannelSubnetRegex.FindStringSubmatch(s)
	if len(parts) != 5 {
		return netip.Prefix{}, netip.Prefix{}, false
	}
	ip4 := net.ParseIP(parts[1]).To4()
	n4, err := strconv.ParseUint(parts[2], 10, 5)
	if ip4 == nil || err != nil {
		return netip.Prefix{}, netip.Prefix{}, false
	}
	v4 = netip.PrefixFrom(netip.AddrFrom4([4]byte(ip4)), int(n4))
	if parts[3] == "" {
		return v4, netip.Prefix{}, true
	}
	ip6 := net.ParseIP(parts[3]).To16()
	n6, err := strconv.ParseUint(parts[4], 10, 7)
	if ip6 == nil || err != nil {
		return netip.Prefix{}, netip.Prefix{}, false
	}
	return v4, netip.PrefixFrom(netip.AddrFrom16([16]byte(ip6)), int(n6)), true
}

// checkLeaseKey checks the subnets that ParseLeaseKey accepted from key.
func checkLeaseKey(t *testing.T, key string, v4, v6 netip.Prefix) {
	t.Helper()
	if !v4.IsValid() && !v6.IsValid() {
		t.Fatalf("ParseLeaseKey(%q) accepted a key of no subnet", key)
	}
	if v4.IsValid() {
		checkSubnetFromKey(t, key, v4)
	} else if !strings.HasPrefix(key, "0.0.0.0-") {
		t.Errorf("ParseLeaseKey(%q) found no IPv4 part, but the key is not flannel's 0.0.0.0-0&...", key)
	}
	if v6.IsValid() {
		if !v6.Addr().Is6() || v6.Addr().Is4In6() || v6.Addr().Zone() != "" || v6 != v6.Masked() || v6.Bits() == 0 || v6.Bits() > 127 {
			t.Fatalf("ParseLeaseKey(%q) = %s: not an IPv6 subnet's own prefix", key, v6)
		}
		form := `&` + regexp.QuoteMeta(v6.Addr().String()) + `-0*` + strconv.Itoa(v6.Bits()) + `$`
		if !regexp.MustCompile(form).MatchString(key) {
			t.Errorf("ParseLeaseKey(%q) = %s, but the key does not end in flannel's &%s-%d", key, v6, v6.Addr(), v6.Bits())
		}
	} else if strings.Contains(key, "&") {
		t.Errorf("ParseLeaseKey(%q) found no IPv6 part in a key with an &", key)
	}
	own := LeaseKey(v4, v6)
	if b4, b6, err := ParseLeaseKey(own); err != nil || b4 != v4 || b6 != v6 {
		t.Errorf("ParseLeaseKey(%q) = %s, %s, but ParseLeaseKey(LeaseKey = %q) = %s, %s, %v", key, v4, v6, own, b4, b6, err)
	}
}

// FuzzParseLease: an accepted lease is a reachable VTEP in each of its
// parts, and round-trips through Value and ParseLease unchanged, its
// subnets the key's; a rejection is the zero Lease with an error that names
// the key or the field at fault.
func FuzzParseLease(f *testing.F) {
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		l, err := ParseLease(key, value)
		if err != nil {
			checkLeaseError(t, key, value, l, err)
			return
		}
		checkLease(t, key, value, l)
	})
}

func checkLease(t *testing.T, key string, value []byte, l Lease) {
	t.Helper()
	v4, v6, err := ParseLeaseKey(key)
	if err != nil || l.Subnet != v4 || l.IPv6Subnet != v6 {
		t.Fatalf("ParseLease(%q, %q) has subnets %s, %s, but the key parses to %s, %s, %v", key, value, l.Subnet, l.IPv6Subnet, v4, v6, err)
	}
	checkLeaseKey(t, key, v4, v6)
	if l.Key != "" || l.CreateRevision != 0 || l.ModRevision != 0 || l.EtcdLease != 0 {
		t.Errorf("ParseLease(%q, %q) set etcd's metadata: %+v", key, value, l)
	}
	if p, ok := l.IPv4(); ok && (!p.PublicIP.Is4() || !isUnicast(p.PublicIP) || !p.VtepMAC.IsUnicast()) ||
		!ok && (l.VtepMAC != MAC{} || l.PublicIP.IsValid() && (!l.PublicIP.Is4() || !isUnicast(l.PublicIP))) {
		t.Errorf("ParseLease(%q, %q): IPv4 part %+v (%v) is no VTEP's", key, value, p, ok)
	}
	if p, ok := l.IPv6(); ok && (!isUnicast(p.PublicIP) || p.PublicIP.Zone() != "" || p.PublicIP.Is4In6() || !p.VtepMAC.IsUnicast()) ||
		ok && l.PublicIPv6.IsValid() && !l.PublicIPv6.Is6() ||
		!ok && (l.VtepMACv6 != MAC{} || l.PublicIPv6.IsValid()) {
		t.Errorf("ParseLease(%q, %q): IPv6 part %+v (%v) is no VTEP's", key, value, p, ok)
	}
	// What vtepd writes for a lease it read is that lease, under its own
	// key and under the one it was read from.
	v := l.Value()
	for _, k := range []string{LeaseKey(l.Subnet, l.IPv6Subnet), key} {
		back, err := ParseLease(k, v)
		if err != nil || back != l {
			t.Fatalf("ParseLease(%q, %q) = %+v, but ParseLease(%q, its Value() %s) = %+v, %v", key, value, l, k, v, back, err)
		}
		if again := back.Value(); string(again) != string(v) {
			t.Errorf("Value() of the round-tripped lease is %s, want %s", again, v)
		}
	}
}

// FuzzLeaseRoundTrip builds leases of every kind (IPv4-only, dual-stack,
// IPv6-only, over either underlay) from raw parts: one that ParseLease
// would accept (unicast addresses of the right families and MACs, masked
// subnets within flannel's key limits) reads back from LeaseKey and Value
// unchanged, in flannel's key form; any other is refused under that key,
// never a panic.
func FuzzLeaseRoundTrip(f *testing.F) {
	f.Fuzz(func(t *testing.T, sub4, sub6 []byte, bits uint16, pub4, pub6, mac4, mac6 []byte, vni int32) {
		prefix := func(b []byte, n uint8) netip.Prefix {
			a, _ := netip.AddrFromSlice(b)
			if p := netip.PrefixFrom(a, int(n)); p.IsValid() {
				return p.Masked()
			}
			return netip.Prefix{}
		}
		addr := func(b []byte) netip.Addr { a, _ := netip.AddrFromSlice(b); return a }
		mac := func(b []byte) MAC {
			var m MAC
			copy(m[:], b)
			return m
		}
		l := Lease{Subnet: prefix(sub4, uint8(bits>>8)), IPv6Subnet: prefix(sub6, uint8(bits)), PublicIP: addr(pub4), PublicIPv6: addr(pub6), VNI: int(vni)}
		if l.Subnet.IsValid() {
			l.VtepMAC = mac(mac4)
		}
		if l.IPv6Subnet.IsValid() {
			l.VtepMACv6 = mac(mac6)
		} else {
			l.PublicIPv6 = netip.Addr{} // Value publishes none without an IPv6 part
		}
		if !l.Subnet.IsValid() && !l.IPv6Subnet.IsValid() {
			return // no key for it
		}
		if !l.Subnet.IsValid() && l.PublicIP == netip.IPv4Unspecified() {
			l.PublicIP = netip.Addr{} // how Value writes none, and ParseLease reads it
		}
		key := LeaseKey(l.Subnet, l.IPv6Subnet)
		back, err := ParseLease(key, l.Value())
		ok4 := !l.Subnet.IsValid() || l.Subnet.Addr().Is4() && l.Subnet.Bits() > 0 && l.PublicIP.Is4() && isUnicast(l.PublicIP) && l.VtepMAC.IsUnicast()
		ok6 := !l.IPv6Subnet.IsValid() || l.IPv6Subnet.Addr().Is6() && !l.IPv6Subnet.Addr().Is4In6() && l.IPv6Subnet.Bits() > 0 && l.IPv6Subnet.Bits() < 128 &&
			l.VtepMACv6.IsUnicast() && (l.PublicIPv6.IsValid() && !l.PublicIPv6.Is4() && !l.PublicIPv6.Is4In6() && isUnicast(l.PublicIPv6) || !l.PublicIPv6.IsValid() && l.PublicIP.Is4() && isUnicast(l.PublicIP))
		okPublic := !l.PublicIP.IsValid() || l.PublicIP.Is4() && isUnicast(l.PublicIP) || l.Subnet.IsValid()
		if !ok4 || !ok6 || !okPublic || l.PublicIP.Is4() && !isUnicast(l.PublicIP) {
			if err == nil {
				t.Fatalf("ParseLease(%q, %s) = %+v for %+v, which is no VTEP's lease", key, l.Value(), back, l)
			}
			return
		}
		if err != nil {
			t.Fatalf("ParseLease(%q, %s) refuses %+v: %v", key, l.Value(), l, err)
		}
		if back != l {
			t.Fatalf("ParseLease(%q, %s) = %+v, want %+v", key, l.Value(), back, l)
		}
		if f4, f6, fok := flannelParseSubnetKey(key); l.Subnet.Bits() != 32 && (!fok || noV4(f4) != l.Subnet || f6 != l.IPv6Subnet) {
			t.Errorf("flannel reads %q as %s, %s (%v), want %s, %s", key, f4, f6, fok, l.Subnet, l.IPv6Subnet)
		}
	})
}

// leaseFields are the words one of which every lease error names: the
// fields of flannel's lease JSON, or the JSON as a whole.
var leaseFields = []string{"PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data", "lease JSON"}

func checkLeaseError(t *testing.T, key string, value []byte, l Lease, err error) {
	t.Helper()
	if l != (Lease{}) {
		t.Errorf("ParseLease(%q, %q) returned %+v with its error", key, value, l)
	}
	msg := err.Error()
	// The key is checked first, and its error is ParseLeaseKey's.
	if _, _, kerr := ParseLeaseKey(key); kerr != nil {
		if msg != kerr.Error() {
			t.Errorf("ParseLease(%q, %q) error %q, want the key's %q", key, value, msg, kerr)
		}
		return
	}
	named := false
	for _, f := range leaseFields {
		named = named || strings.Contains(msg, f)
	}
	if !named {
		t.Errorf("ParseLease(%q, %q) error %q names none of %q", key, value, msg, leaseFields)
	}
	if errors.Is(err, ErrNotVXLAN) && !strings.Contains(msg, "BackendType") {
		t.Errorf("ParseLease(%q, %q) error %q is ErrNotVXLAN but does not name BackendType", key, value, msg)
	}
}

// flannelConfig is how flanneld decodes the fields of the network config
// that vtepd reads: encoding/json into a struct (pkg/subnet/config.go), so
// names match ignoring case and of two keys for one field the last wins.
// EnableIPv4 is true unless the document says otherwise.
type flannelConfig struct {
	EnableIPv4, EnableIPv6                    bool
	Network, SubnetMin, SubnetMax             string
	IPv6Network, IPv6SubnetMin, IPv6SubnetMax string
	SubnetLen, IPv6SubnetLen                  int
	Backend                                   json.RawMessage
}

// flannelBackend is the vxlan backend's part of it (vxlan.go's
// RegisterNetwork); VNI is a pointer because an absent VNI is 1 and an
// explicit 0 is 0.
type flannelBackend struct {
	Type                         string
	VNI                          *int
	Port, MTU                    int
	GBP, Learning, DirectRouting bool
}

// configFields are the fields a *ConfigError may name ("" for the document).
var configFields = map[string]bool{"": true, "EnableIPv4": true, "EnableIPv6": true,
	"Network": true, "SubnetLen": true, "SubnetMin": true, "SubnetMax": true,
	"IPv6Network": true, "IPv6SubnetLen": true, "IPv6SubnetMin": true, "IPv6SubnetMax": true,
	"Backend": true, "Backend.Type": true, "Backend.VNI": true, "Backend.Port": true,
	"Backend.MTU": true, "Backend.GBP": true, "Backend.Learning": true, "Backend.DirectRouting": true}

// FuzzParseConfig: an accepted config holds its documented invariants and
// written out in full parses back the same; a rejection is the zero Config
// with a *ConfigError that names the key and the field; and either way,
// ParseConfig reads the fields flanneld reads as flanneld reads them.
func FuzzParseConfig(f *testing.F) {
	f.Fuzz(func(t *testing.T, value []byte) {
		cfg, err := ParseConfig(testConfigKey, value)
		if err != nil {
			checkConfigError(t, value, cfg, err)
		} else {
			checkConfig(t, value, cfg)
		}
		checkReadsAsFlanneld(t, value, cfg, err)
	})
}

// withoutWarnings is cfg without its Warnings, which say what a document
// has besides what flanneld reads from it.
func withoutWarnings(cfg Config) Config {
	cfg.Warnings = nil
	return cfg
}

// checkReadsAsFlanneld checks that ParseConfig, which gave cfg, err for
// value, reads from it what flanneld reads: the same document rewritten
// with only the fields as flanneld decodes them parses the same way.
func checkReadsAsFlanneld(t *testing.T, value []byte, cfg Config, err error) {
	t.Helper()
	fc := flannelConfig{EnableIPv4: true}
	var fb flannelBackend
	if ferr := json.Unmarshal(value, &fc); ferr != nil {
		if err == nil {
			t.Errorf("ParseConfig(%q) = %+v, but flanneld cannot decode it: %v", value, cfg, ferr)
		}
		return
	}
	if ferr := json.Unmarshal(fc.Backend, &fb); ferr != nil {
		if err == nil {
			t.Errorf("ParseConfig(%q) = %+v, but flanneld cannot decode its Backend: %v", value, cfg, ferr)
		}
		return
	}
	type backend struct {
		Type                         string
		VNI                          *int `json:",omitempty"`
		Port, MTU                    int
		GBP, Learning, DirectRouting bool
	}
	read, merr := json.Marshal(struct {
		EnableIPv4, EnableIPv6       bool
		Network                      string
		SubnetLen                    int
		SubnetMin, SubnetMax         string
		IPv6Network                  string
		IPv6SubnetLen                int
		IPv6SubnetMin, IPv6SubnetMax string
		Backend                      backend
	}{fc.EnableIPv4, fc.EnableIPv6, fc.Network, fc.SubnetLen, fc.SubnetMin, fc.SubnetMax,
		fc.IPv6Network, fc.IPv6SubnetLen, fc.IPv6SubnetMin, fc.IPv6SubnetMax, backend(fb)})
	if merr != nil {
		t.Fatal(merr)
	}
	back, berr := ParseConfig(testConfigKey, read)
	if (err == nil) != (berr == nil) || !sameConfig(withoutWarnings(back), withoutWarnings(cfg)) {
		t.Errorf("ParseConfig(%q) = %+v, %v; but flanneld reads it as %s, for which ParseConfig = %+v, %v",
			value, cfg, err, read, back, berr)
	}
}

func checkConfig(t *testing.T, value []byte, cfg Config) {
	t.Helper()
	f4, ok4 := cfg.IPv4()
	f6, ok6 := cfg.IPv6()
	if !ok4 && !ok6 || ok4 != cfg.EnableIPv4 || ok6 != cfg.EnableIPv6 {
		t.Fatalf("ParseConfig(%q): EnableIPv4 %v, EnableIPv6 %v, but families IPv4 %v, IPv6 %v", value, cfg.EnableIPv4, cfg.EnableIPv6, ok4, ok6)
	}
	if ok4 {
		checkFamily(t, value, "", f4, 30)
	} else if f4 != (FamilyConfig{}) {
		t.Errorf("ParseConfig(%q): IPv4 is off but its fields are %+v", value, f4)
	}
	if ok6 {
		checkFamily(t, value, "IPv6", f6, 126)
	} else if f6 != (FamilyConfig{}) {
		t.Errorf("ParseConfig(%q): IPv6 is off but its fields are %+v", value, f6)
	}
	if ok4 {
		if c := cfg.SubnetCount(); c < 1 || c > 1<<(cfg.SubnetLen-f4.Network.Bits()) {
			t.Errorf("ParseConfig(%q): SubnetCount() = %d, want 1 to %d", value, c, 1<<(cfg.SubnetLen-f4.Network.Bits()))
		}
	}
	b := cfg.Backend
	minMTU := 68 + 50
	if ok6 {
		minMTU = 1280 + 70
	}
	if b.Type != "vxlan" || b.VNI < 0 || b.VNI >= 1<<24 || b.Port < 1 || b.Port > 65535 || b.MTU != 0 && (b.MTU < minMTU || b.MTU > 65535) {
		t.Errorf("ParseConfig(%q): Backend %+v: want vxlan, a 24-bit VNI, a UDP port, an MTU of 0 or %d to 65535", value, b, minMTU)
	}

	// The config with every default written out is the same config, less
	// the warnings about what it had besides.
	var full strings.Builder
	fmt.Fprintf(&full, `{"EnableIPv4":%t,"EnableIPv6":%t`, cfg.EnableIPv4, cfg.EnableIPv6)
	if ok4 {
		fmt.Fprintf(&full, `,"Network":%q,"SubnetLen":%d,"SubnetMin":%q,"SubnetMax":%q`, cfg.Network, cfg.SubnetLen, cfg.SubnetMin, cfg.SubnetMax)
	}
	if ok6 {
		fmt.Fprintf(&full, `,"IPv6Network":%q,"IPv6SubnetLen":%d,"IPv6SubnetMin":%q,"IPv6SubnetMax":%q`,
			cfg.IPv6Network, cfg.IPv6SubnetLen, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax)
	}
	fmt.Fprintf(&full, `,"Backend":{"Type":%q,"VNI":%d,"Port":%d,"MTU":%d,"GBP":%t,"Learning":%t,"DirectRouting":%t}}`,
		b.Type, b.VNI, b.Port, b.MTU, b.GBP, b.Learning, b.DirectRouting)
	back, err := ParseConfig(testConfigKey, []byte(full.String()))
	if err != nil || !sameConfig(back, withoutWarnings(cfg)) {
		t.Errorf("ParseConfig(%q) = %+v, but ParseConfig(%s) = %+v, %v", value, cfg, full.String(), back, err)
	}
	for _, w := range cfg.Warnings {
		if !strings.Contains(w, " ignored: ") {
			t.Errorf("ParseConfig(%q): warning %q does not say what is ignored", value, w)
		}
	}
}

// checkFamily checks one family of an accepted config; prefix is the
// fields' prefix ("" or "IPv6"), maxLen flannel's longest subnet.
func checkFamily(t *testing.T, value []byte, prefix string, f FamilyConfig, maxLen int) {
	t.Helper()
	n := f.Network
	if !n.IsValid() || n != n.Masked() || n.Addr().Is4In6() || n.Addr().Zone() != "" || (prefix == "") != n.Addr().Is4() {
		t.Fatalf("ParseConfig(%q): %sNetwork %s is not a network's own prefix of its family", value, prefix, n)
	}
	// At least four subnets (a device and a bridge address each); flannel
	// stops at a /30 and a /126.
	if f.SubnetLen < n.Bits()+2 || f.SubnetLen > maxLen {
		t.Fatalf("ParseConfig(%q): %sSubnetLen %d for %sNetwork %s", value, prefix, f.SubnetLen, prefix, n)
	}
	for name, a := range map[string]netip.Addr{prefix + "SubnetMin": f.SubnetMin, prefix + "SubnetMax": f.SubnetMax} {
		if !n.Contains(a) {
			t.Errorf("ParseConfig(%q): %s %s is not inside %sNetwork %s", value, name, a, prefix, n)
		}
		if sub := netip.PrefixFrom(a, f.SubnetLen); sub.Masked() != sub {
			t.Errorf("ParseConfig(%q): %s %s is not on a /%d boundary", value, name, a, f.SubnetLen)
		}
	}
	if f.SubnetMax.Less(f.SubnetMin) {
		t.Errorf("ParseConfig(%q): %sSubnetMax %s < %sSubnetMin %s", value, prefix, f.SubnetMax, prefix, f.SubnetMin)
	}
}

func checkConfigError(t *testing.T, value []byte, cfg Config, err error) {
	t.Helper()
	if !sameConfig(cfg, Config{}) {
		t.Errorf("ParseConfig(%q) returned %+v with its error", value, cfg)
	}
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("ParseConfig(%q) error %v is a %T, not a *ConfigError", value, err, err)
	}
	if ce.Key != testConfigKey || ce.Err == nil || ce.Err.Error() == "" || !configFields[ce.Field] {
		t.Errorf("ParseConfig(%q) error %#v: want Key %q, a known field, a cause", value, ce, testConfigKey)
	}
	msg := err.Error()
	if !strings.Contains(msg, testConfigKey) || ce.Field != "" && !strings.Contains(msg, strconv.Quote(ce.Field)) {
		t.Errorf("ParseConfig(%q) error %q does not name key %s and field %q", value, msg, testConfigKey, ce.Field)
	}
}

// FuzzSyncParseKV is the syncer's reading of a key-value from etcd: it takes
// exactly the leases ParseLease takes under the subnets prefix (one element
// below it) that belong to the network, each part to its family, keeps
// etcd's metadata, drops an IPv6 part the overlay has no use for, and warns
// about anything else once per key and revision, naming the key. Each input
// is read by the syncers of an IPv4-only, a dual-stack and an IPv6-only
// overlay.
func FuzzSyncParseKV(f *testing.F) {
	dual := testConfig()
	dual.EnableIPv6, dual.IPv6Network, dual.IPv6SubnetLen = true, netip.MustParsePrefix("fd00:10::/48"), 64
	dual.IPv6SubnetMin, dual.IPv6SubnetMax = netip.MustParseAddr("fd00:10:0:1::"), netip.MustParseAddr("fd00:10:0:ffff::")
	v6only := dual
	v6only.EnableIPv4, v6only.Network, v6only.SubnetLen, v6only.SubnetMin, v6only.SubnetMax = false, netip.Prefix{}, 0, netip.Addr{}, netip.Addr{}
	configs := []Config{testConfig(), dual, v6only}
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		for _, cfg := range configs {
			checkSyncParseKV(t, cfg, key, value)
		}
	})
}

// belongs is whether a lease ParseLease accepted belongs to cfg's overlay,
// and the lease as the table admits it.
func belongs(cfg Config, l Lease) (Lease, bool) {
	ok4 := l.Subnet.IsValid() && cfg.Network.IsValid() && cfg.Network.Contains(l.Subnet.Addr()) && l.Subnet.Bits() >= cfg.Network.Bits()
	ok6 := l.IPv6Subnet.IsValid() && cfg.IPv6Network.IsValid() && cfg.IPv6Network.Contains(l.IPv6Subnet.Addr()) && l.IPv6Subnet.Bits() >= cfg.IPv6Network.Bits()
	if l.Subnet.IsValid() && !ok4 || l.IPv6Subnet.IsValid() && cfg.IPv6Network.IsValid() && !ok6 || !ok4 && !ok6 || l.VNI != cfg.Backend.VNI {
		return Lease{}, false
	}
	if !cfg.IPv6Network.IsValid() {
		l.IPv6Subnet, l.PublicIPv6, l.VtepMACv6 = netip.Prefix{}, netip.Addr{}, MAC{}
	}
	return l, true
}

func checkSyncParseKV(t *testing.T, cfg Config, key string, value []byte) {
	t.Helper()
	core, logs := observer.New(zapcore.WarnLevel)
	s := &syncer{t: NewTable(cfg), prefix: testSubnetsPrefix, log: zap.New(core), warned: make(map[string]int64)}
	kv := &mvccpb.KeyValue{Key: []byte(key), Value: value, CreateRevision: 3, ModRevision: 7, Lease: 0x1234}
	overlay := fmt.Sprintf("network %s, IPv6 network %s, VNI %d", cfg.Network, cfg.IPv6Network, cfg.Backend.VNI)

	l, err := s.parseKV(kv)
	subnetKey, under := strings.CutPrefix(key, testSubnetsPrefix)
	under = under && !strings.Contains(subnetKey, "/")
	parsed, werr := ParseLease(subnetKey, value)
	want, ok := belongs(cfg, parsed)
	ok = ok && werr == nil
	if err != nil {
		if l != (Lease{}) {
			t.Errorf("%s: parseKV(%q, %q) returned %+v with its error", overlay, key, value, l)
		}
		switch msg := err.Error(); {
		case !under && !strings.Contains(msg, "not a lease key under "+testSubnetsPrefix):
			t.Errorf("%s: parseKV(%q, %q) error %q, want it to say the key is not under %s", overlay, key, value, msg, testSubnetsPrefix)
		case under && werr != nil && msg != werr.Error():
			t.Errorf("%s: parseKV(%q, %q) error %q, want ParseLease's %q", overlay, key, value, msg, werr)
		case under && ok:
			t.Errorf("%s: parseKV(%q, %q) rejected a lease of the network: %v", overlay, key, value, err)
		case under && werr == nil && !strings.Contains(msg, "subnet") && !strings.Contains(msg, "BackendData.VNI") && !strings.Contains(msg, "BackendV6Data.VNI"):
			t.Errorf("%s: parseKV(%q, %q) error %q names neither a subnet nor a VNI", overlay, key, value, msg)
		}
	} else {
		switch {
		case !under:
			t.Errorf("%s: parseKV(%q, %q) accepted a key that is not one element under %s", overlay, key, value, testSubnetsPrefix)
		case !ok:
			t.Errorf("%s: parseKV(%q, %q) = %+v, but ParseLease says %+v, %v", overlay, key, value, l, parsed, werr)
		default:
			want.Key, want.CreateRevision, want.ModRevision, want.EtcdLease = key, kv.CreateRevision, kv.ModRevision, kv.Lease
			if l != want {
				t.Errorf("%s: parseKV(%q, %q) = %+v, want %+v", overlay, key, value, l, want)
			}
			// What the syncer reads, the table admits into its empty self and
			// finds by each part's address and MAC.
			s.t.mu.Lock()
			_, perr := s.t.put(l)
			s.t.mu.Unlock()
			if perr != nil {
				t.Fatalf("%s: put(%+v) into an empty table: %v", overlay, l, perr)
			}
			for _, p := range []func() (Part, bool){l.IPv4, l.IPv6} {
				if p, ok := p(); ok {
					if got, found := s.t.LookupIP(p.Subnet.Addr()); !found || got != l {
						t.Errorf("%s: LookupIP(%s) = %+v, %v; want %+v", overlay, p.Subnet.Addr(), got, found, l)
					}
					if got, found := s.t.LookupMAC(p.VtepMAC); !found || got != l {
						t.Errorf("%s: LookupMAC(%s) = %+v, %v; want %+v", overlay, p.VtepMAC, got, found, l)
					}
				}
			}
		}
	}

	// parse warns about a bad key-value once per revision, and only
	// about a bad one.
	for i, rev := range []int64{7, 7, 8} {
		kv.ModRevision = rev
		if _, ok := s.parse(kv); ok != (err == nil) {
			t.Fatalf("%s: parse(%q, %q) ok = %v, parseKV's error %v", overlay, key, value, ok, err)
		}
		wantWarnings := 0
		if err != nil {
			wantWarnings = []int{1, 1, 2}[i]
		}
		if n := logs.Len(); n != wantWarnings || s.t.Stats().Invalid != uint64(wantWarnings) {
			t.Fatalf("%s: after %d parses (revisions 7, 7, 8) of (%q, %q): %d warnings, %d counted, want %d",
				overlay, i+1, key, value, n, s.t.Stats().Invalid, wantWarnings)
		}
	}
	for _, e := range logs.All() {
		if got := e.ContextMap()["key"]; got != key {
			t.Errorf("%s: warning %q names key %v, want %q", overlay, e.Message, got, key)
		}
	}
}
