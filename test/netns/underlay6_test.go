package netns_test

import (
	"cmp"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/fabric"
	lab "github.com/vtepd/vtepd/test/netns"
)

// TestUnderlayChoiceIPv6: the underlay's IPv6 address in flannel's order
// (global before link-local, permanent before dynamic, non-temporary before
// temporary, never a deprecated one), --iface by IPv6 address,
// --iface-regex on IPv6 addresses, --public-ipv6, what each stack needs of
// an interface, the IPv6 default route, and Reaches (flannel's
// DirectRouting test), on a host with several interfaces.
func TestUnderlayChoiceIPv6(t *testing.T) {
	t.Parallel()
	l := newLab(t, "vtf6ul")
	h, err := l.AddHost()
	if err != nil {
		t.Fatal(err)
	}
	// eth0: 198.51.100.11/24 (the IPv4 default route) and 2001:db8:5::11.
	// v6a: IPv6 addresses of every kind, the permanent ones added first
	// (the kernel lists a device's addresses of one scope newest first);
	// a temporary one made by the kernel from a mngtmpaddr one.
	// v4only: an IPv4 address alone (and no IPv6 at all).
	// v6only: IPv6 alone.
	for _, c := range [][]string{
		{"ip", "addr", "add", "2001:db8:5::11/64", "dev", "eth0", "nodad"},
		{"ip", "link", "add", "v6a", "type", "veth", "peer", "name", "v6ap"},
		{"sh", "-c", "echo 2 > /proc/sys/net/ipv6/conf/v6a/use_tempaddr"},
		{"ip", "link", "set", "v6a", "up"},
		{"ip", "link", "set", "v6ap", "up"},
		{"ip", "addr", "add", "203.0.113.21/24", "dev", "v6a"},
		{"ip", "addr", "add", "2001:db8:7::5/64", "dev", "v6a", "nodad"},
		{"ip", "addr", "add", "fd00:77::5/64", "dev", "v6a", "nodad"},
		{"ip", "addr", "add", "2001:db8:7::d/64", "dev", "v6a", "nodad", "preferred_lft", "0"},
		{"ip", "addr", "add", "2001:db8:7::1:1/64", "dev", "v6a", "nodad", "valid_lft", "3600", "preferred_lft", "3600", "mngtmpaddr"},
		{"ip", "link", "add", "v4only", "type", "veth", "peer", "name", "v4onlyp"},
		{"sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/v4only/disable_ipv6"},
		{"ip", "addr", "add", "203.0.113.31/24", "dev", "v4only"},
		{"ip", "link", "add", "v6only", "type", "veth", "peer", "name", "v6onlyp"},
		{"ip", "addr", "add", "2001:db8:8::5/64", "dev", "v6only", "nodad"},
		{"ip", "link", "set", "v6only", "up"},
		{"ip", "link", "set", "v6onlyp", "up"},
	} {
		mustExec(t, h, c...)
	}
	// The kernel's order of v6a's global addresses, to be sure the test
	// is about preference and not about it: the temporary, dynamic and
	// deprecated ones come before the permanent ones.
	out := mustExec(t, h, "ip", "-6", "-o", "addr", "show", "dev", "v6a", "scope", "global")
	if !strings.Contains(out, "temporary") || strings.Index(out, "fd00:77::5/") < strings.Index(out, "2001:db8:7::d/") {
		t.Fatalf("v6a's addresses are not as the test needs them:\n%s", out)
	}
	kernel, err := fabric.OpenReaderAt(nsOf(t, h))
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
		name        string
		spec        fabric.UnderlaySpec
		iface       string
		addr, addr6 string // "" for none
		public6     string // "" for addr6
		wantError   []string
	}{
		{name: "dual-stack, default route", spec: fabric.UnderlaySpec{Stack: fabric.DualStack},
			iface: "eth0", addr: "198.51.100.11", addr6: "2001:db8:5::11"},
		{name: "permanent before deprecated, dynamic, temporary", spec: fabric.UnderlaySpec{Ifaces: []string{"v6a"}, Stack: fabric.DualStack},
			iface: "v6a", addr: "203.0.113.21", addr6: "fd00:77::5"},
		{name: "IPv4 stack takes the interface's IPv6 address too", spec: fabric.UnderlaySpec{Ifaces: []string{"v6a"}},
			iface: "v6a", addr: "203.0.113.21", addr6: "fd00:77::5"},
		{name: "by IPv6 address, not the first", spec: fabric.UnderlaySpec{Ifaces: []string{"2001:db8:7::1:1"}, Stack: fabric.DualStack},
			iface: "v6a", addr: "203.0.113.21", addr6: "2001:db8:7::1:1"},
		{name: "by IPv6 address with an IPv4 stack", spec: fabric.UnderlaySpec{Ifaces: []string{"2001:db8:7::5"}},
			iface: "v6a", addr: "203.0.113.21", addr6: "2001:db8:7::5"},
		{name: "regex on an IPv6 address", spec: fabric.UnderlaySpec{IfaceRegexes: res(`^2001:db8:8::`), Stack: fabric.IPv6Stack},
			iface: "v6only", addr6: "2001:db8:8::5"},
		{name: "IPv6-only over an interface with IPv4 alone", spec: fabric.UnderlaySpec{Ifaces: []string{"v4only"}, Stack: fabric.IPv6Stack},
			iface: "v4only", addr: "203.0.113.31"},
		{name: "IPv6-only over IPv6 alone", spec: fabric.UnderlaySpec{Ifaces: []string{"v6only"}, Stack: fabric.IPv6Stack},
			iface: "v6only", addr6: "2001:db8:8::5"},
		{name: "public IPv6", spec: fabric.UnderlaySpec{Ifaces: []string{"eth0"}, Stack: fabric.DualStack, PublicIPv6: netip.MustParseAddr("2001:db8:99::1")},
			iface: "eth0", addr: "198.51.100.11", addr6: "2001:db8:5::11", public6: "2001:db8:99::1"},
		{name: "dual-stack needs both", spec: fabric.UnderlaySpec{Ifaces: []string{"v4only", "v6only", "2001:db8:8::5", "v6a"}, Stack: fabric.DualStack},
			iface: "v6a", addr: "203.0.113.21", addr6: "fd00:77::5"},
		{name: "nothing has what dual-stack needs", spec: fabric.UnderlaySpec{Ifaces: []string{"v4only", "v6only", "2001:db8:8::5"}, IfaceRegexes: res("^v4"), Stack: fabric.DualStack},
			wantError: []string{"v4only (no IPv6 address (a dual-stack overlay needs both))", "v6only (no IPv4 address", "2001:db8:8::5 (v6only has no IPv4 address", "/^v4/ (matches no address, nor the name of an interface with an IPv4 and an IPv6 address)"}},
		{name: "IPv4 stack skips an IPv6-only interface", spec: fabric.UnderlaySpec{Ifaces: []string{"v6only", "2001:db8:8::5"}},
			wantError: []string{"v6only (no IPv4 address)", "2001:db8:8::5 (v6only has no IPv4 address)"}},
		{name: "a public IPv6 that is not one", spec: fabric.UnderlaySpec{PublicIPv6: netip.MustParseAddr("203.0.113.9"), Stack: fabric.DualStack},
			wantError: []string{"public IPv6 address 203.0.113.9 is not an IPv6 address"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := kernel.FindUnderlay(tt.spec)
			if tt.wantError != nil {
				if err == nil {
					t.Fatalf("chose %s (%s, %s), want an error", u.Name, u.Addr, u.Addr6)
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
			str := func(a netip.Addr) string {
				if !a.IsValid() {
					return ""
				}
				return a.String()
			}
			public6 := tt.public6
			if public6 == "" {
				public6 = tt.addr6
			}
			if u.Name != tt.iface || str(u.Addr) != tt.addr || str(u.Addr6) != tt.addr6 || str(u.PublicIPv6) != public6 || str(u.PublicIP) != tt.addr {
				t.Errorf("chose %s %q/%q publishing %q/%q, want %s %q/%q publishing %q/%q",
					u.Name, str(u.Addr), str(u.Addr6), str(u.PublicIP), str(u.PublicIPv6), tt.iface, tt.addr, tt.addr6, tt.addr, public6)
			}
		})
	}

	t.Run("flannel's order down to link-local", func(t *testing.T) {
		spec := fabric.UnderlaySpec{Ifaces: []string{"v6a"}, Stack: fabric.IPv6Stack}
		for _, step := range []struct {
			remove, want string
		}{
			{"fd00:77::5/64", "2001:db8:7::5"},      // the other permanent one
			{"2001:db8:7::5/64", "2001:db8:7::1:1"}, // dynamic before its temporary
			{"2001:db8:7::1:1/64", ""},              // a link-local one, the deprecated one never
		} {
			mustExec(t, h, "ip", "addr", "del", step.remove, "dev", "v6a")
			// The kernel retires the temporary address of a deleted
			// mngtmpaddr one on its own time.
			var u fabric.Underlay
			err := lab.Poll(5*time.Second, func() (err error) {
				if u, err = kernel.FindUnderlay(spec); err != nil {
					return err
				}
				if step.want == "" && !u.Addr6.IsLinkLocalUnicast() || step.want != "" && u.Addr6.String() != step.want {
					return fmt.Errorf("without %s: %s, want %s", step.remove, u.Addr6, cmp.Or(step.want, "the link-local address"))
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("Reaches", func(t *testing.T) {
		u, err := kernel.FindUnderlay(fabric.UnderlaySpec{Stack: fabric.DualStack})
		if err != nil {
			t.Fatal(err)
		}
		for peer, want := range map[string]bool{
			"198.51.100.12":  true,
			"198.51.100.11":  false, // its own
			"203.0.113.22":   false, // another interface's subnet
			"2001:db8:5::12": true,
			"2001:db8:6::12": false,
			"2001:db8:5::11": false,
		} {
			if got := u.Reaches(netip.MustParseAddr(peer)); got != want {
				t.Errorf("Reaches(%s) = %v, want %v (subnets %s, %s)", peer, got, want, u.Subnet, u.Subnet6)
			}
		}
	})

	t.Run("IPv6 default route", func(t *testing.T) {
		mustExec(t, h, "ip", "-6", "route", "add", "default", "via", "2001:db8:8::1", "dev", "v6only")
		u, err := kernel.FindUnderlay(fabric.UnderlaySpec{Stack: fabric.IPv6Stack})
		if err != nil || u.Name != "v6only" || u.Addr6.String() != "2001:db8:8::5" {
			t.Errorf("IPv6-only, IPv6 default route on v6only: %s %s, %v", u.Name, u.Addr6, err)
		}
		u, err = kernel.FindUnderlay(fabric.UnderlaySpec{})
		if err != nil || u.Name != "eth0" {
			t.Errorf("IPv4-only: %s, %v; want eth0, the IPv4 default route's", u.Name, err)
		}
		_, err = kernel.FindUnderlay(fabric.UnderlaySpec{Stack: fabric.DualStack})
		if err == nil || !strings.Contains(err.Error(), "IPv6 default route's interface v6only is not the IPv4 one's, eth0") {
			t.Errorf("dual-stack with the default routes on two interfaces: %v", err)
		}
	})
}
