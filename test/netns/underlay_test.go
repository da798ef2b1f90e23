package netns_test

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/vtepd/vtepd/fabric"
	lab "github.com/vtepd/vtepd/test/netns"
)

// TestUnderlayChoice: --iface (names or addresses, first match wins),
// --iface-regex (addresses first, then names) and --public-ip, as flannel
// reads them, on a host with several interfaces; errors name what was
// tried.
func TestUnderlayChoice(t *testing.T) {
	t.Parallel()
	l := newLab(t, "vtiface")
	h, err := l.AddHost()
	if err != nil {
		t.Fatal(err)
	}
	// eth0 (198.51.100.11, the default route), data1 with two addresses,
	// enp7s0, and noaddr0 without an address (veth pairs: this kernel may
	// have no dummy driver).
	for _, c := range [][]string{
		{"ip", "link", "add", "data1", "type", "veth", "peer", "name", "data1p"},
		{"ip", "addr", "add", "203.0.113.21/24", "dev", "data1"},
		{"ip", "addr", "add", "203.0.113.22/24", "dev", "data1"},
		{"ip", "link", "add", "enp7s0", "type", "veth", "peer", "name", "enp7s0p"},
		{"ip", "addr", "add", "203.0.113.31/24", "dev", "enp7s0"},
		{"ip", "link", "add", "noaddr0", "type", "veth", "peer", "name", "noaddr0p"},
	} {
		mustExec(t, h, c...)
	}
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	kernel, err := fabric.OpenReaderAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer kernel.Close()

	res := func(s ...string) []*regexp.Regexp {
		var out []*regexp.Regexp
		for _, r := range s {
			out = append(out, regexp.MustCompile(r))
		}
		return out
	}
	tests := []struct {
		name      string
		spec      fabric.UnderlaySpec
		iface     string
		addr      string
		public    string
		wantError []string
	}{
		{name: "default route", iface: "eth0", addr: "198.51.100.11"},
		{name: "by name", spec: fabric.UnderlaySpec{Ifaces: []string{"enp7s0"}}, iface: "enp7s0", addr: "203.0.113.31"},
		{name: "first match wins", spec: fabric.UnderlaySpec{Ifaces: []string{"missing0", "noaddr0", "data1", "enp7s0"}}, iface: "data1", addr: "203.0.113.21"},
		{name: "by address, not the first", spec: fabric.UnderlaySpec{Ifaces: []string{"203.0.113.22"}}, iface: "data1", addr: "203.0.113.22"},
		{name: "names before regexes", spec: fabric.UnderlaySpec{Ifaces: []string{"enp7s0"}, IfaceRegexes: res("^data")}, iface: "enp7s0", addr: "203.0.113.31"},
		{name: "regex on a name", spec: fabric.UnderlaySpec{IfaceRegexes: res("^enp")}, iface: "enp7s0", addr: "203.0.113.31"},
		{name: "regex on an address", spec: fabric.UnderlaySpec{IfaceRegexes: res(`^203\.0\.113\.22$`)}, iface: "data1", addr: "203.0.113.22"},
		{name: "regexes in order", spec: fabric.UnderlaySpec{IfaceRegexes: res("^nomatch", "^noaddr", "^eth")}, iface: "eth0", addr: "198.51.100.11"},
		{name: "public IP behind NAT", spec: fabric.UnderlaySpec{Ifaces: []string{"eth0"}, PublicIP: netip.MustParseAddr("203.0.113.200")},
			iface: "eth0", addr: "198.51.100.11", public: "203.0.113.200"},
		{name: "nothing matches", spec: fabric.UnderlaySpec{Ifaces: []string{"missing0", "noaddr0", "203.0.113.99"}, IfaceRegexes: res("^wlan")},
			wantError: []string{"missing0 (no such interface)", "noaddr0 (no IPv4 address)", "203.0.113.99 (no interface has this address)", "/^wlan/"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := kernel.FindUnderlay(tt.spec)
			if tt.wantError != nil {
				if err == nil {
					t.Fatalf("chose %s (%s), want an error", u.Name, u.Addr)
				}
				for _, w := range tt.wantError {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			public := tt.public
			if public == "" {
				public = tt.addr
			}
			if u.Name != tt.iface || u.Addr.String() != tt.addr || u.PublicIP.String() != public {
				t.Errorf("chose %s %s publishing %s, want %s %s publishing %s", u.Name, u.Addr, u.PublicIP, tt.iface, tt.addr, public)
			}
		})
	}
}

// TestUnderlayWait: vtepd started with --iface naming interfaces that are
// not there yet waits, saying what it tried, and starts once one appears;
// --public-ip is what its lease publishes, the interface address what its
// VXLAN device sends from.
func TestUnderlayWait(t *testing.T) {
	t.Parallel()
	o := newOverlay(t, "vtifwait", 0, 0)
	h, err := o.lab.AddHost()
	if err != nil {
		t.Fatal(err)
	}
	p, err := h.StartVtepdNoWait("--iface", "bond0", "--iface", "203.0.113.41", "--public-ip", "203.0.113.250")
	if err != nil {
		t.Fatal(err)
	}
	err = lab.Poll(10*time.Second, func() error {
		for _, e := range p.Entries("choosing the underlay interface failed; retrying") {
			if s := e.Str("error"); strings.Contains(s, "bond0 (no such interface)") && strings.Contains(s, "203.0.113.41 (no interface has this address)") {
				return nil
			}
		}
		return errString("no log line naming both interfaces tried")
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, p.Tail(10))
	}
	if done, err := p.Exited(); done {
		t.Fatalf("vtepd exited instead of waiting: %v", err)
	}
	mustExec(t, h, "ip", "link", "add", "data1", "type", "veth", "peer", "name", "data1p")
	mustExec(t, h, "ip", "addr", "add", "203.0.113.41/24", "dev", "data1")
	mustExec(t, h, "ip", "link", "set", "data1", "up")
	if err := h.WaitReady(p, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	env, err := h.Subnet()
	if err != nil {
		t.Fatal(err)
	}
	l := leaseOf(t, o, env.Subnet.Masked())
	if l.PublicIP.String() != "203.0.113.250" {
		t.Errorf("the lease publishes %s, want --public-ip 203.0.113.250", l.PublicIP)
	}
	k, err := h.Kernel(device)
	if err != nil {
		t.Fatal(err)
	}
	vx, ok := k.Device.(*netlink.Vxlan)
	if !ok || vx.SrcAddr.String() != "203.0.113.41" {
		t.Errorf("VXLAN device %+v, want local 203.0.113.41 (data1's address)", k.Device)
	}
}
