package store

import (
	"errors"
	"net/netip"
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
		// A dual-stack flanneld's key: only the IPv4 part concerns vtepd.
		{"10.5.48.0-24&fd00:10::-64", "10.5.48.0/24"},
		{"10.5.48.0-24&", "10.5.48.0/24"},
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

// flannelValue is the value flannel's documentation shows for a vxlan lease;
// vtepd writes exactly this.
const flannelValue = `{"PublicIP":"203.0.113.11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:54"}}`

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
	tests := []struct{ key, value string }{
		{"10.5.48.0-24", flannelValue},
		// flanneld (IPv4 only) also writes PublicIPv6 as null.
		{"10.5.48.0-24", `{"PublicIP":"203.0.113.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:54"}}`},
		// A dual-stack flanneld: IPv6 key part, PublicIPv6, BackendV6Data.
		{"10.5.48.0-24&fd00:10::-64", `{"PublicIP":"203.0.113.11","PublicIPv6":"2001:db8::11","BackendType":"vxlan",` +
			`"BackendData":{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:54"},"BackendV6Data":{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:55"}}`},
		// Whitespace and field order are not significant.
		{"10.5.48.0-24", "{\n  \"BackendData\": {\"VtepMAC\": \"E2:5A:5B:43:22:54\", \"VNI\": 1},\n  \"BackendType\": \"vxlan\",\n  \"PublicIP\": \"203.0.113.11\"\n}"},
	}
	for _, tt := range tests {
		l, err := ParseLease(tt.key, []byte(tt.value))
		if err != nil {
			t.Errorf("ParseLease(%q, %s): %v", tt.key, tt.value, err)
			continue
		}
		if want := flannelLease(); l != want {
			t.Errorf("ParseLease(%q, %s) = %+v, want %+v", tt.key, tt.value, l, want)
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
			l, err := ParseLease(tt.key, []byte(tt.value))
			if err == nil {
				t.Fatalf("ParseLease(%q, %s) = %+v, want an error", tt.key, tt.value, l)
			}
			if l != (Lease{}) {
				t.Errorf("ParseLease returned %+v with its error, want the zero Lease", l)
			}
			if !strings.Contains(err.Error(), tt.says) {
				t.Errorf("error %q does not say %q", err, tt.says)
			}
			if got := errors.Is(err, ErrNotVXLAN); got != tt.notVXLAN {
				t.Errorf("errors.Is(%v, ErrNotVXLAN) = %v, want %v", err, got, tt.notVXLAN)
			}
		})
	}
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
