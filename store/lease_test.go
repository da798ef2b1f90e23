package store

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

func TestParseSubnetKey(t *testing.T) {
	valid := []struct {
		key  string
		want string
	}{
		{"10.5.48.0-24", "10.5.48.0/24"},
		{"10.5.48.128-25", "10.5.48.128/25"},
		{"10.9.0.4-30", "10.9.0.4/30"},
		{"10.5.48.7-32", "10.5.48.7/32"},
		{"10.0.0.0-8", "10.0.0.0/8"},
		{"128.0.0.0-1", "128.0.0.0/1"},
		// A dual-stack flanneld's key: ParseSubnetKey gives its IPv4 part.
		{"10.5.48.0-24&fd00:10::-64", "10.5.48.0/24"},
	}
	for _, tt := range valid {
		p, err := ParseSubnetKey(tt.key)
		if err != nil {
			t.Errorf("ParseSubnetKey(%q): %v", tt.key, err)
			continue
		}
		if want := netip.MustParsePrefix(tt.want); p != want {
			t.Errorf("ParseSubnetKey(%q) = %s, want %s", tt.key, p, want)
		}
	}

	invalid := []struct {
		key, says string
	}{
		{"", "not of the form"},
		{"10.5.48.0", "not of the form"},
		{"10.5.48.0/24", "not of the form"},
		{"10.5.48.0_24", "not of the form"},
		{"10.5.48-24", "not an IPv4 address"},
		{"10.5.48.256-24", "not an IPv4 address"},
		{"ten.five.48.0-24", "not an IPv4 address"},
		{"-24", "not an IPv4 address"},
		{"fd00:10::-64", "not an IPv4 address"},
		{"::ffff:10.5.48.0-120", "not an IPv4 address"},
		{"fd00:10::-64&10.5.48.0-24", "not an IPv4 address"},
		{"10.5.48.0-", "not a prefix length"},
		{"10.5.48.0-0", "not a prefix length"},
		{"0.0.0.0-0", "not a prefix length"},
		{"10.5.48.0-33", "not a prefix length"},
		{"10.5.48.0--1", "not a prefix length"},
		{"10.5.48.0-24x", "not a prefix length"},
		{"10.5.48.0-24-1", "not a prefix length"},
		{"10.5.48.1-24", "host bits set, the subnet starts at 10.5.48.0"},
		{"10.5.48.128-23", "host bits set, the subnet starts at 10.5.48.0"},
		{"10.5.49.0-23", "host bits set, the subnet starts at 10.5.48.0"},
		// The IPv6 part is checked too, as flannel's regular expression
		// does: a key flanneld skips is not a lease for vtepd either.
		{"10.5.48.0-24&", `IPv6 part "" is not of the form`},
		{"10.5.48.0-24&garbage", `IPv6 part "garbage" is not of the form`},
		{"10.5.48.0-24&fd00:10::-128", "not a prefix length"},
		{"10.5.48.0-24&FD00:10::-64", "not of the form"},
		// An IPv6-only lease has no IPv4 subnet to give.
		{"0.0.0.0-0&fd00:10::-64", "has no IPv4 part"},
	}
	for _, tt := range invalid {
		p, err := ParseSubnetKey(tt.key)
		if err == nil {
			t.Errorf("ParseSubnetKey(%q) = %s, want an error", tt.key, p)
			continue
		}
		if !strings.Contains(err.Error(), tt.says) || !strings.Contains(err.Error(), tt.key) {
			t.Errorf("ParseSubnetKey(%q) error %q should name the key and say %q", tt.key, err, tt.says)
		}
	}
}

func TestParseLeaseKey(t *testing.T) {
	valid := []struct{ key, v4, v6 string }{
		{"10.5.48.0-24", "10.5.48.0/24", ""},
		{"10.5.48.0-24&fd00:10::-64", "10.5.48.0/24", "fd00:10::/64"},
		{"10.42.0.0-24&2001:cafe:42::-64", "10.42.0.0/24", "2001:cafe:42::/64"},
		// flannel's IPv6-only key: the zero IPv4 subnet, then the IPv6 part.
		{"0.0.0.0-0&fd00:10::-64", "", "fd00:10::/64"},
		{"0.0.0.0-0&fd00:10:0:30::-64", "", "fd00:10:0:30::/64"},
		{"10.5.48.0-24&fd00:10::1:0-112", "10.5.48.0/24", "fd00:10::1:0/112"},
		{"10.5.48.0-24&fd00::-8", "10.5.48.0/24", "fd00::/8"},
		// The longest IPv6 length flannel's ParseUint(s, 10, 7) takes.
		{"10.5.48.0-24&fd00:10::2-127", "10.5.48.0/24", "fd00:10::2/127"},
		// Leading zeros in a length, as flannel's \d+ takes them.
		{"10.5.48.0-24&fd00:10::-064", "10.5.48.0/24", "fd00:10::/64"},
	}
	for _, tt := range valid {
		v4, v6, err := ParseLeaseKey(tt.key)
		if err != nil {
			t.Errorf("ParseLeaseKey(%q): %v", tt.key, err)
			continue
		}
		var w4, w6 netip.Prefix
		if tt.v4 != "" {
			w4 = netip.MustParsePrefix(tt.v4)
		}
		if tt.v6 != "" {
			w6 = netip.MustParsePrefix(tt.v6)
		}
		if v4 != w4 || v6 != w6 {
			t.Errorf("ParseLeaseKey(%q) = %s, %s; want %s, %s", tt.key, v4, v6, w4, w6)
		}
	}

	invalid := []struct{ key, says string }{
		{"10.5.48.0-24&", "not of the form fd00:10::-64"},
		// What the fuzz helper found accepted.
		{"10.5.48.0-24&garbage", "not of the form fd00:10::-64"},
		{"10.5.48.0-24&fd00:10::", "not of the form fd00:10::-64"},
		{"10.5.48.0-24&-64", "not of the form fd00:10::-64"},
		{"10.5.48.0-24&fd00:10::-", "not a prefix length"},
		{"10.5.48.0-24&fd00:10::-0", "not a prefix length"},
		{"10.5.48.0-24&fd00:10::-128", "not a prefix length"},
		{"10.5.48.0-24&fd00:10::-+64", "not a prefix length"},
		{"10.5.48.0-24&fd00:10::-64x", "not a prefix length"},
		{"10.5.48.0-24&fd00:10::-64&fd00:11::-64", "not of the form"},
		// Uppercase, embedded IPv4 and zones do not match flannel's
		// [a-f\d:]+ either.
		{"10.5.48.0-24&FD00:10::-64", "not of the form"},
		{"10.5.48.0-24&fd00:10::A-64", "not of the form"},
		{"10.5.48.0-24&::ffff:10.5.48.0-120", "not of the form"},
		{"10.5.48.0-24&64:ff9b::10.5.48.0-120", "not of the form"},
		{"10.5.48.0-24&fe80::%eth0-64", "not of the form"},
		// What the expression takes but no flanneld writes.
		{"10.5.48.0-24&::ffff:a05:3000-120", "IPv4-mapped"},
		{"10.5.48.0-24&fd00:0010::-64", "the address is written fd00:10::"},
		{"10.5.48.0-24&fd00:0:0:0:0:0:0:0-64", "the address is written fd00::"},
		{"10.5.48.0-24&fd00:10:::-64", "not an IPv6 address"},
		{"10.5.48.0-24&1:2:3:4:5:6:7:8:9-64", "not an IPv6 address"},
		{"10.5.48.0-24&fd00:10::1-64", "host bits set: the subnet starts at fd00:10::"},
		{"10.5.48.0-24&fd00:10:0:30::-48", "host bits set: the subnet starts at fd00:10::"},
		// No IPv4 part is 0.0.0.0-0, and only before an IPv6 one.
		{"0.0.0.0-0", "not a prefix length"},
		{"0.0.0.0-0&", "not of the form fd00:10::-64"},
		{"10.5.48.0-0&fd00:10::-64", "not a prefix length"},
		{"0.0.0.0-00", "not a prefix length"},
		{"fd00:10::-64", "not an IPv4 address"},
		{"&fd00:10::-64", "not of the form 10.5.48.0-24"},
		{"10.5.48.1-24&fd00:10::-64", "host bits set, the subnet starts at 10.5.48.0"},
	}
	for _, tt := range invalid {
		v4, v6, err := ParseLeaseKey(tt.key)
		if err == nil {
			t.Errorf("ParseLeaseKey(%q) = %s, %s; want an error", tt.key, v4, v6)
			continue
		}
		if v4.IsValid() || v6.IsValid() {
			t.Errorf("ParseLeaseKey(%q) returned %s, %s with its error", tt.key, v4, v6)
		}
		if !strings.Contains(err.Error(), tt.says) || !strings.Contains(err.Error(), strconv.Quote(tt.key)) {
			t.Errorf("ParseLeaseKey(%q) error %q should quote the key and say %q", tt.key, err, tt.says)
		}
	}
}

func TestLeaseKey(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tt := range []struct {
		v4, v6 netip.Prefix
		want   string
	}{
		{p("10.5.48.0/24"), netip.Prefix{}, "10.5.48.0-24"},
		{p("10.5.48.0/24"), p("fd00:10::/64"), "10.5.48.0-24&fd00:10::-64"},
		{netip.Prefix{}, p("fd00:10::/64"), "0.0.0.0-0&fd00:10::-64"},
		{p("10.5.48.0/24"), p("2001:DB8:0:0:1::/80"), "10.5.48.0-24&2001:db8:0:0:1::-80"},
		{p("10.5.48.0/24"), p("fd00:0:0:30::/64"), "10.5.48.0-24&fd00:0:0:30::-64"},
	} {
		got := LeaseKey(tt.v4, tt.v6)
		if got != tt.want {
			t.Errorf("LeaseKey(%s, %s) = %q, want flannel's %q", tt.v4, tt.v6, got, tt.want)
		}
		if v4, v6, err := ParseLeaseKey(got); err != nil || v4 != tt.v4 || v6 != tt.v6 {
			t.Errorf("ParseLeaseKey(%q) = %s, %s, %v", got, v4, v6, err)
		}
	}
	if got := LeaseKey(p("10.5.48.0/24"), netip.Prefix{}); got != SubnetKey(p("10.5.48.0/24")) {
		t.Errorf("LeaseKey of an IPv4-only lease %q is not its SubnetKey", got)
	}
}

func TestSubnetKeyRoundTrip(t *testing.T) {
	for _, s := range []string{"10.5.48.0/24", "10.5.48.128/25", "10.9.0.4/30", "10.0.0.0/8", "192.168.7.64/26", "10.5.48.7/32"} {
		p := netip.MustParsePrefix(s)
		key := SubnetKey(p)
		if want := strings.Replace(s, "/", "-", 1); key != want {
			t.Errorf("SubnetKey(%s) = %q, want %q", p, key, want)
		}
		back, err := ParseSubnetKey(key)
		if err != nil || back != p {
			t.Errorf("ParseSubnetKey(SubnetKey(%s)) = %s, %v", p, back, err)
		}
	}
}

// flannelValue is the value flanneld's vxlan backend writes for an IPv4
// lease (LeaseAttrs' PublicIPv6 has no omitempty: it is null); vtepd
// writes exactly this.
const flannelValue = `{"PublicIP":"203.0.113.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:54"}}`

// flannelDualValue is what a dual-stack flanneld writes: both backend
// data, each with its device's own MAC.
const flannelDualValue = `{"PublicIP":"203.0.113.11","PublicIPv6":"2001:db8::11","BackendType":"vxlan",` +
	`"BackendData":{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:54"},"BackendV6Data":{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:55"}}`

func flannelDualLease() Lease {
	l := flannelLease()
	l.IPv6Subnet = netip.MustParsePrefix("fd00:10::/64")
	l.PublicIPv6 = netip.MustParseAddr("2001:db8::11")
	l.VtepMACv6 = MAC{0xe2, 0x5a, 0x5b, 0x43, 0x22, 0x55}
	return l
}

func flannelLease() Lease {
	return Lease{
		Subnet:   netip.MustParsePrefix("10.5.48.0/24"),
		PublicIP: netip.MustParseAddr("203.0.113.11"),
		VtepMAC:  MAC{0xe2, 0x5a, 0x5b, 0x43, 0x22, 0x54},
		VNI:      1,
	}
}

func TestLeaseValueIsFlannels(t *testing.T) {
	l := flannelLease()
	if got := string(l.Value()); got != flannelValue {
		t.Errorf("Value() =\n  %s\nwant\n  %s", got, flannelValue)
	}
	// Fields vtepd keeps for itself are not published.
	l.Key, l.CreateRevision, l.ModRevision, l.EtcdLease = "/coreos.com/network/subnets/10.5.48.0-24", 3, 4, 5
	if got := string(l.Value()); got != flannelValue {
		t.Errorf("Value() with etcd metadata =\n  %s\nwant\n  %s", got, flannelValue)
	}

	back, err := ParseLease("10.5.48.0-24", l.Value())
	if err != nil {
		t.Fatalf("ParseLease(Value()): %v", err)
	}
	if want := flannelLease(); back != want {
		t.Errorf("ParseLease(Value()) = %+v, want %+v", back, want)
	}

	other := Lease{Subnet: netip.MustParsePrefix("10.5.0.64/26"), PublicIP: netip.MustParseAddr("192.0.2.200"), VtepMAC: MAC{2, 0, 0, 0, 0xab, 0xcd}, VNI: 16777215}
	back, err = ParseLease(SubnetKey(other.Subnet), other.Value())
	if err != nil || back != other {
		t.Errorf("round trip of %+v = %+v, %v", other, back, err)
	}
}

func TestParseLeaseFromFlanneld(t *testing.T) {
	v6only := Lease{
		IPv6Subnet: netip.MustParsePrefix("fd00:10::/64"),
		PublicIPv6: netip.MustParseAddr("2001:db8::11"),
		VtepMACv6:  MAC{0xe2, 0x5a, 0x5b, 0x43, 0x22, 0x55},
		VNI:        1,
	}
	v6overV4 := v6only
	v6overV4.PublicIPv6, v6overV4.PublicIP = netip.Addr{}, netip.MustParseAddr("203.0.113.11")
	dualOverV4 := flannelDualLease()
	dualOverV4.PublicIPv6 = netip.Addr{}
	tests := []struct {
		key, value string
		want       Lease
	}{
		{"10.5.48.0-24", flannelValue, flannelLease()},
		// flanneld before dual-stack wrote no PublicIPv6 at all.
		{"10.5.48.0-24", `{"PublicIP":"203.0.113.11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:54"}}`, flannelLease()},
		// A dual-stack flanneld: IPv6 key part, PublicIPv6, BackendV6Data.
		{"10.5.48.0-24&fd00:10::-64", flannelDualValue, flannelDualLease()},
		// An IPv6-only host, as flannel's code would write it (the zero
		// IPv4 subnet and address, no BackendData).
		{"0.0.0.0-0&fd00:10::-64", `{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::11","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:55"}}`, v6only},
		// vtepd's IPv6 part over an IPv4 underlay: PublicIPv6 null.
		{"0.0.0.0-0&fd00:10::-64", `{"PublicIP":"203.0.113.11","PublicIPv6":null,"BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:55"}}`, v6overV4},
		{"10.5.48.0-24&fd00:10::-64", `{"PublicIP":"203.0.113.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:54"},"BackendV6Data":{"VtepMAC":"e2:5a:5b:43:22:55"}}`, dualOverV4},
		// Whitespace and field order are not significant.
		{"10.5.48.0-24", "{\n  \"BackendData\": {\"VtepMAC\": \"E2:5A:5B:43:22:54\", \"VNI\": 1},\n  \"BackendType\": \"vxlan\",\n  \"PublicIP\": \"203.0.113.11\"\n}", flannelLease()},
	}
	for _, tt := range tests {
		l, err := ParseLease(tt.key, []byte(tt.value))
		if err != nil {
			t.Errorf("ParseLease(%q, %s): %v", tt.key, tt.value, err)
			continue
		}
		if l != tt.want {
			t.Errorf("ParseLease(%q, %s) = %+v, want %+v", tt.key, tt.value, l, tt.want)
		}
	}
}

func TestLeaseValueDualStackIsFlannels(t *testing.T) {
	l := flannelDualLease()
	if got := string(l.Value()); got != flannelDualValue {
		t.Errorf("Value() =\n  %s\nwant flanneld's\n  %s", got, flannelDualValue)
	}
	if back, err := ParseLease(LeaseKey(l.Subnet, l.IPv6Subnet), l.Value()); err != nil || back != l {
		t.Errorf("ParseLease(Value()) = %+v, %v; want %+v", back, err, l)
	}
	// IPv6-only: PublicIP 0.0.0.0 (flannel's zero IP4), no BackendData.
	v6 := Lease{IPv6Subnet: l.IPv6Subnet, PublicIPv6: l.PublicIPv6, VtepMACv6: l.VtepMACv6, VNI: 1}
	want := `{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::11","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:55"}}`
	if got := string(v6.Value()); got != want {
		t.Errorf("IPv6-only Value() =\n  %s\nwant\n  %s", got, want)
	}
	if back, err := ParseLease("0.0.0.0-0&fd00:10::-64", v6.Value()); err != nil || back != v6 {
		t.Errorf("ParseLease(IPv6-only Value()) = %+v, %v; want %+v", back, err, v6)
	}
	// A PublicIPv6 without an IPv6 part is not published: the value would
	// not parse under its key.
	stray := flannelLease()
	stray.PublicIPv6 = netip.MustParseAddr("2001:db8::11")
	if got := string(stray.Value()); got != flannelValue {
		t.Errorf("Value() with a stray PublicIPv6 = %s, want %s", got, flannelValue)
	}
}

func TestLeaseParts(t *testing.T) {
	l := flannelDualLease()
	p4, ok4 := l.IPv4()
	p6, ok6 := l.IPv6()
	if !ok4 || p4 != (Part{Subnet: l.Subnet, PublicIP: l.PublicIP, VtepMAC: l.VtepMAC}) || p4.Gateway() != netip.MustParseAddr("10.5.48.0") {
		t.Errorf("IPv4() = %+v, %v", p4, ok4)
	}
	if !ok6 || p6 != (Part{Subnet: l.IPv6Subnet, PublicIP: l.PublicIPv6, VtepMAC: l.VtepMACv6}) || p6.Gateway() != netip.MustParseAddr("fd00:10::") {
		t.Errorf("IPv6() = %+v, %v", p6, ok6)
	}
	if s, want := l.String(), "10.5.48.0/24 via 203.0.113.11 (e2:5a:5b:43:22:54), fd00:10::/64 via 2001:db8::11 (e2:5a:5b:43:22:55)"; s != want {
		t.Errorf("String() = %q, want %q", s, want)
	}
	// An IPv6 part over an IPv4 underlay goes to PublicIP.
	l.PublicIPv6 = netip.Addr{}
	if p6, _ := l.IPv6(); p6.PublicIP != l.PublicIP {
		t.Errorf("IPv6() without PublicIPv6 goes to %s, want PublicIP %s", p6.PublicIP, l.PublicIP)
	}
	v6 := Lease{IPv6Subnet: l.IPv6Subnet, PublicIPv6: netip.MustParseAddr("2001:db8::11"), VtepMACv6: l.VtepMACv6}
	if _, ok := v6.IPv4(); ok || v6.Gateway().IsValid() {
		t.Errorf("an IPv6-only lease has an IPv4 part")
	}
	if s, want := v6.String(), "fd00:10::/64 via 2001:db8::11 (e2:5a:5b:43:22:55)"; s != want {
		t.Errorf("String() = %q, want %q", s, want)
	}
	if _, ok := flannelLease().IPv6(); ok {
		t.Errorf("an IPv4-only lease has an IPv6 part")
	}
	dual := flannelDualLease()
	for name, change := range map[string]func(*Lease){
		"IPv6 subnet":   func(o *Lease) { o.IPv6Subnet = netip.MustParsePrefix("fd00:11::/64") },
		"PublicIPv6":    func(o *Lease) { o.PublicIPv6 = netip.MustParseAddr("2001:db8::12") },
		"IPv6 VTEP MAC": func(o *Lease) { o.VtepMACv6[5]++ },
		"no IPv6 part":  func(o *Lease) { o.IPv6Subnet, o.PublicIPv6, o.VtepMACv6 = netip.Prefix{}, netip.Addr{}, MAC{} },
	} {
		o := dual
		change(&o)
		if dual.SameTarget(o) || o.SameTarget(dual) {
			t.Errorf("SameTarget is true for leases with another %s", name)
		}
	}
}

func TestParseLeaseErrors(t *testing.T) {
	const mac = `"VtepMAC":"e2:5a:5b:43:22:54"`
	withIP := func(ip string) string {
		return `{"PublicIP":` + ip + `,"BackendType":"vxlan","BackendData":{"VNI":1,` + mac + `}}`
	}
	withData := func(data string) string {
		return `{"PublicIP":"203.0.113.11","BackendType":"vxlan","BackendData":` + data + `}`
	}
	withMAC := func(m string) string { return withData(`{"VNI":1,"VtepMAC":` + m + `}`) }
	tests := []struct {
		name, key, value, says string
		notVXLAN               bool
	}{
		{"bad key", "10.5.48.1-24", flannelValue, "host bits set", false},
		{"not JSON", "10.5.48.0-24", `PublicIP=203.0.113.11`, "not flannel's lease JSON", false},
		{"empty value", "10.5.48.0-24", ``, "not flannel's lease JSON", false},
		{"JSON array", "10.5.48.0-24", `[]`, "not flannel's lease JSON", false},
		{"PublicIP a number", "10.5.48.0-24", withIP(`3405803787`), "not flannel's lease JSON", false},
		{"udp backend", "10.5.48.0-24", `{"PublicIP":"203.0.113.11","BackendType":"udp"}`, `BackendType "udp"`, true},
		{"host-gw backend", "10.5.48.0-24", `{"PublicIP":"203.0.113.11","BackendType":"host-gw"}`, `BackendType "host-gw"`, true},
		{"BackendType missing", "10.5.48.0-24", `{"PublicIP":"203.0.113.11","BackendData":{"VNI":1,` + mac + `}}`, `BackendType ""`, true},
		{"BackendType case", "10.5.48.0-24", `{"PublicIP":"203.0.113.11","BackendType":"VXLAN","BackendData":{"VNI":1,` + mac + `}}`, `BackendType "VXLAN"`, true},
		{"PublicIP missing", "10.5.48.0-24", `{"BackendType":"vxlan","BackendData":{"VNI":1,` + mac + `}}`, "PublicIP", false},
		{"PublicIP empty", "10.5.48.0-24", withIP(`""`), `PublicIP "" is not an IPv4 address`, false},
		{"PublicIP garbage", "10.5.48.0-24", withIP(`"host-11"`), `PublicIP "host-11" is not an IPv4 address`, false},
		{"PublicIP IPv6", "10.5.48.0-24", withIP(`"2001:db8::11"`), "is not an IPv4 address", false},
		{"PublicIP IPv4-mapped", "10.5.48.0-24", withIP(`"::ffff:203.0.113.11"`), "is not an IPv4 address", false},
		{"PublicIP with zone", "10.5.48.0-24", withIP(`"fe80::1%eth0"`), "is not an IPv4 address", false},
		{"PublicIP unspecified", "10.5.48.0-24", withIP(`"0.0.0.0"`), "PublicIP 0.0.0.0 is not a unicast address", false},
		{"PublicIP multicast", "10.5.48.0-24", withIP(`"239.1.2.3"`), "PublicIP 239.1.2.3 is not a unicast address", false},
		{"PublicIP all-hosts multicast", "10.5.48.0-24", withIP(`"224.0.0.1"`), "not a unicast address", false},
		{"PublicIP broadcast", "10.5.48.0-24", withIP(`"255.255.255.255"`), "PublicIP 255.255.255.255 is not a unicast address", false},
		{"PublicIP loopback", "10.5.48.0-24", withIP(`"127.0.0.1"`), "PublicIP 127.0.0.1 is not a unicast address", false},
		{"PublicIP loopback elsewhere", "10.5.48.0-24", withIP(`"127.3.2.1"`), "not a unicast address", false},
		{"BackendData missing", "10.5.48.0-24", `{"PublicIP":"203.0.113.11","BackendType":"vxlan"}`, "BackendData is missing", false},
		{"BackendData a string", "10.5.48.0-24", withData(`"e2:5a:5b:43:22:54"`), "BackendData is not", false},
		{"BackendData an array", "10.5.48.0-24", withData(`[1,"e2:5a:5b:43:22:54"]`), "BackendData is not", false},
		{"BackendData a number", "10.5.48.0-24", withData(`1`), "BackendData is not", false},
		{"BackendData VNI a string", "10.5.48.0-24", withData(`{"VNI":"1",` + mac + `}`), "BackendData is not", false},
		{"BackendData null", "10.5.48.0-24", withData(`null`), "VtepMAC", false},
		{"VtepMAC missing", "10.5.48.0-24", withData(`{"VNI":1}`), "BackendData.VtepMAC", false},
		{"VtepMAC a number", "10.5.48.0-24", withMAC(`1`), "BackendData is not", false},
		{"VtepMAC short", "10.5.48.0-24", withMAC(`"e2:5a:5b:43:22"`), "BackendData.VtepMAC", false},
		{"VtepMAC garbage", "10.5.48.0-24", withMAC(`"e2:5a:5b:43:22:zz"`), "BackendData.VtepMAC", false},
		{"VtepMAC EUI-64", "10.5.48.0-24", withMAC(`"e2:5a:5b:ff:fe:43:22:54"`), "BackendData.VtepMAC", false},
		{"VtepMAC base64 bytes", "10.5.48.0-24", withMAC(`"4lpbQyJU"`), "BackendData.VtepMAC", false},
		{"VtepMAC zero", "10.5.48.0-24", withMAC(`"00:00:00:00:00:00"`), "BackendData.VtepMAC 00:00:00:00:00:00 is not a unicast MAC", false},
		{"VtepMAC multicast", "10.5.48.0-24", withMAC(`"01:00:5e:00:00:01"`), "BackendData.VtepMAC 01:00:5e:00:00:01 is not a unicast MAC", false},
		{"VtepMAC group bit", "10.5.48.0-24", withMAC(`"e3:5a:5b:43:22:54"`), "is not a unicast MAC", false},
		{"VtepMAC broadcast", "10.5.48.0-24", withMAC(`"ff:ff:ff:ff:ff:ff"`), "BackendData.VtepMAC ff:ff:ff:ff:ff:ff is not a unicast MAC", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := expectLeaseError(t, tt.key, tt.value, tt.says)
			if got := errors.Is(err, ErrNotVXLAN); got != tt.notVXLAN {
				t.Errorf("errors.Is(%v, ErrNotVXLAN) = %v, want %v", err, got, tt.notVXLAN)
			}
		})
	}
}

// TestParseLeaseIPv6Errors: each part is validated on its own, and a key
// and a value that disagree about the parts are refused, naming the field.
func TestParseLeaseIPv6Errors(t *testing.T) {
	const dualKey, v6Key, v4Key = "10.5.48.0-24&fd00:10::-64", "0.0.0.0-0&fd00:10::-64", "10.5.48.0-24"
	const v4data = `"BackendData":{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:54"}`
	dual := func(public6, v6data string) string {
		return `{"PublicIP":"203.0.113.11","PublicIPv6":` + public6 + `,"BackendType":"vxlan",` + v4data + `,"BackendV6Data":` + v6data + `}`
	}
	only6 := func(public, public6, v6data string) string {
		return `{"PublicIP":` + public + `,"PublicIPv6":` + public6 + `,"BackendType":"vxlan","BackendV6Data":` + v6data + `}`
	}
	const v6data = `{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:55"}`
	tests := []struct{ name, key, value, says string }{
		{"v6 key with a v4 value", dualKey, flannelValue, "BackendV6Data is missing, but the key has an IPv6 part fd00:10::/64"},
		{"v6 key with BackendV6Data null", dualKey, dual(`"2001:db8::11"`, `null`), "BackendV6Data is missing"},
		{"v6-only key with a v4 value", v6Key, flannelValue, "BackendData given, but the key has no IPv4 part"},
		{"v6 value with an IPv4-only key", v4Key, flannelDualValue, "BackendV6Data given, but the key has no IPv6 part"},
		{"PublicIPv6 with an IPv4-only key", v4Key, `{"PublicIP":"203.0.113.11","PublicIPv6":"2001:db8::11","BackendType":"vxlan",` + v4data + `}`,
			`PublicIPv6 "2001:db8::11" given, but the key has no IPv6 part`},
		{"PublicIPv6 garbage", dualKey, dual(`"host-11"`, v6data), `PublicIPv6 "host-11" is not an IPv6 address`},
		{"PublicIPv6 empty", dualKey, dual(`""`, v6data), `PublicIPv6 "" is not an IPv6 address`},
		{"PublicIPv6 IPv4", dualKey, dual(`"203.0.113.11"`, v6data), `PublicIPv6 "203.0.113.11" is not an IPv6 address`},
		{"PublicIPv6 IPv4-mapped", dualKey, dual(`"::ffff:203.0.113.11"`, v6data), "is not an IPv6 address"},
		{"PublicIPv6 with zone", dualKey, dual(`"fe80::1%eth0"`, v6data), "is not an IPv6 address"},
		{"PublicIPv6 a number", dualKey, dual(`42`, v6data), "not flannel's lease JSON"},
		{"PublicIPv6 unspecified", dualKey, dual(`"::"`, v6data), "PublicIPv6 :: is not a unicast address"},
		{"PublicIPv6 loopback", dualKey, dual(`"::1"`, v6data), "PublicIPv6 ::1 is not a unicast address"},
		{"PublicIPv6 multicast", dualKey, dual(`"ff02::1"`, v6data), "PublicIPv6 ff02::1 is not a unicast address"},
		{"BackendV6Data a string", dualKey, dual(`"2001:db8::11"`, `"e2:5a:5b:43:22:55"`), "BackendV6Data is not"},
		{"BackendV6Data VNI a string", dualKey, dual(`"2001:db8::11"`, `{"VNI":"1","VtepMAC":"e2:5a:5b:43:22:55"}`), "BackendV6Data is not"},
		{"BackendV6Data VNI differs", dualKey, dual(`"2001:db8::11"`, `{"VNI":2,"VtepMAC":"e2:5a:5b:43:22:55"}`), "BackendV6Data.VNI 2 differs from BackendData.VNI 1"},
		{"BackendV6Data.VtepMAC missing", dualKey, dual(`"2001:db8::11"`, `{"VNI":1}`), "BackendV6Data.VtepMAC"},
		{"BackendV6Data.VtepMAC garbage", dualKey, dual(`"2001:db8::11"`, `{"VNI":1,"VtepMAC":"zz"}`), "BackendV6Data.VtepMAC"},
		{"BackendV6Data.VtepMAC multicast", dualKey, dual(`"2001:db8::11"`, `{"VNI":1,"VtepMAC":"33:33:00:00:00:01"}`),
			"BackendV6Data.VtepMAC 33:33:00:00:00:01 is not a unicast MAC"},
		{"IPv6 part without a VTEP address", v6Key, only6(`"0.0.0.0"`, `null`, v6data), "PublicIPv6 is null and PublicIP \"0.0.0.0\" is none"},
		{"IPv6-only, PublicIP missing too", v6Key, `{"PublicIPv6":null,"BackendType":"vxlan","BackendV6Data":` + v6data + `}`, "has no VTEP address"},
		{"IPv6-only, PublicIP garbage", v6Key, only6(`"host-11"`, `"2001:db8::11"`, v6data), `PublicIP "host-11" is not an IPv4 address`},
		{"IPv6-only, PublicIP multicast", v6Key, only6(`"239.1.2.3"`, `"2001:db8::11"`, v6data), "PublicIP 239.1.2.3 is not a unicast address"},
		{"IPv4 part still needs its PublicIP", dualKey, `{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::11","BackendType":"vxlan",` + v4data + `,"BackendV6Data":` + v6data + `}`,
			"PublicIP 0.0.0.0 is not a unicast address"},
		{"bad IPv6 key part", "10.5.48.0-24&garbage", flannelDualValue, `IPv6 part "garbage"`},
		{"uppercase IPv6 key part", "10.5.48.0-24&FD00:10::-64", flannelDualValue, "lowercase hex digits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { expectLeaseError(t, tt.key, tt.value, tt.says) })
	}
}

// expectLeaseError checks that ParseLease refuses the lease with the zero
// Lease and an error that says says, and returns the error.
func expectLeaseError(t *testing.T, key, value, says string) error {
	t.Helper()
	l, err := ParseLease(key, []byte(value))
	if err == nil {
		t.Fatalf("ParseLease(%q, %s) = %+v, want an error", key, value, l)
	}
	if l != (Lease{}) {
		t.Errorf("ParseLease returned %+v with its error, want the zero Lease", l)
	}
	if !strings.Contains(err.Error(), says) {
		t.Errorf("error %q does not say %q", err, says)
	}
	return err
}

func TestParseMAC(t *testing.T) {
	valid := map[string]MAC{
		"e2:5a:5b:43:22:54": {0xe2, 0x5a, 0x5b, 0x43, 0x22, 0x54},
		"E2:5A:5B:43:22:54": {0xe2, 0x5a, 0x5b, 0x43, 0x22, 0x54},
		"02:00:00:00:00:01": {2, 0, 0, 0, 0, 1},
		"00:00:00:00:00:00": {},
		"ff:ff:ff:ff:ff:ff": {0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	}
	for s, want := range valid {
		m, err := ParseMAC(s)
		if err != nil || m != want {
			t.Errorf("ParseMAC(%q) = %v, %v; want %v", s, m, err, want)
		}
	}
	for _, s := range []string{"", "e2:5a:5b:43:22", "e2:5a:5b:43:22:54:", "e2:5a:5b:43:22:5g", "e2:5a:5b:43:22:54:00",
		"e2:5a:5b:ff:fe:43:22:54", "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01"} {
		if m, err := ParseMAC(s); err == nil {
			t.Errorf("ParseMAC(%q) = %v, want an error", s, m)
		} else if !strings.Contains(err.Error(), "not an Ethernet MAC address") {
			t.Errorf("ParseMAC(%q) error %q", s, err)
		}
	}
}

func TestMAC(t *testing.T) {
	tests := []struct {
		m       MAC
		unicast bool
		s       string
	}{
		{MAC{0xe2, 0x5a, 0x5b, 0x43, 0x22, 0x54}, true, "e2:5a:5b:43:22:54"},
		{MAC{0x02, 0, 0, 0, 0, 1}, true, "02:00:00:00:00:01"},
		{MAC{0, 0, 0, 0, 0, 1}, true, "00:00:00:00:00:01"},
		{MAC{}, false, "00:00:00:00:00:00"},
		{MAC{0x01, 0x00, 0x5e, 0, 0, 1}, false, "01:00:5e:00:00:01"},
		{MAC{0x33, 0x33, 0, 0, 0, 1}, false, "33:33:00:00:00:01"},
		{MAC{0x03, 0, 0, 0, 0, 1}, false, "03:00:00:00:00:01"},
		{MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, false, "ff:ff:ff:ff:ff:ff"},
	}
	for _, tt := range tests {
		if got := tt.m.IsUnicast(); got != tt.unicast {
			t.Errorf("%v.IsUnicast() = %v, want %v", tt.m, got, tt.unicast)
		}
		if got := tt.m.String(); got != tt.s {
			t.Errorf("String() = %q, want %q", got, tt.s)
		}
		if back, err := ParseMAC(tt.m.String()); err != nil || back != tt.m {
			t.Errorf("ParseMAC(%v.String()) = %v, %v", tt.m, back, err)
		}
	}

	m := MAC{0xe2, 0x5a, 0x5b, 0x43, 0x22, 0x54}
	hw := m.HardwareAddr()
	if hw.String() != m.String() || len(hw) != 6 {
		t.Fatalf("HardwareAddr() = %v", hw)
	}
	hw[0] = 0
	if m[0] != 0xe2 || m.HardwareAddr()[0] != 0xe2 {
		t.Error("HardwareAddr() shares memory with the MAC")
	}
}

func TestLeaseHelpers(t *testing.T) {
	l := flannelLease()
	if g := l.Gateway(); g != netip.MustParseAddr("10.5.48.0") {
		t.Errorf("Gateway() = %s, want 10.5.48.0", g)
	}
	if s, want := l.String(), "10.5.48.0/24 via 203.0.113.11 (e2:5a:5b:43:22:54)"; s != want {
		t.Errorf("String() = %q, want %q", s, want)
	}

	same := l
	same.Key, same.VNI, same.CreateRevision, same.ModRevision, same.EtcdLease = "k", 9, 1, 2, 3
	if !l.SameTarget(same) {
		t.Error("SameTarget is false for leases that differ only in metadata")
	}
	for name, change := range map[string]func(*Lease){
		"subnet":    func(o *Lease) { o.Subnet = netip.MustParsePrefix("10.5.49.0/24") },
		"length":    func(o *Lease) { o.Subnet = netip.MustParsePrefix("10.5.48.0/25") },
		"public IP": func(o *Lease) { o.PublicIP = netip.MustParseAddr("203.0.113.12") },
		"VTEP MAC":  func(o *Lease) { o.VtepMAC[5]++ },
	} {
		o := l
		change(&o)
		if l.SameTarget(o) || o.SameTarget(l) {
			t.Errorf("SameTarget is true for leases with another %s", name)
		}
	}
}
