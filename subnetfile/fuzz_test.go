package subnetfile

import (
	"bufio"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The fuzz targets of the subnet file, which another flannel-compatible
// agent or an operator may have written. Their seeds are in
// testdata/fuzz/<target>/; plain `go test` runs them, `make fuzz` fuzzes.

// knownKeys are the variables Read parses; every error about a value names
// one of them.
var knownKeys = []string{"FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"}

// FuzzRead: a rejected file gets an error naming the file and the variable
// at fault; an accepted one reads the same among comments and variables
// Read does not know, gains exactly flannel's IPv6 lines when they are
// added after it, and, once each family it has is whole, reads as what
// Write makes of it.
func FuzzRead(f *testing.F) {
	f.Fuzz(func(t *testing.T, content []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "subnet.env")
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
		e, err := Read(path)
		if err != nil {
			if e != (Env{}) {
				t.Errorf("Read(%q) returned %+v with its error", content, e)
			}
			msg := err.Error()
			named := errors.Is(err, bufio.ErrTooLong)
			for _, k := range knownKeys {
				named = named || strings.Contains(msg, path+":") && strings.Contains(msg, " "+k+"=")
			}
			if !strings.HasPrefix(msg, "subnetfile: ") || !strings.Contains(msg, path) || !named {
				t.Errorf("Read(%q) error %q does not name the file and the variable at fault (or a too long line)", content, msg)
			}
			return
		}

		// Comments and other variables change nothing.
		other := "# written by flanneld\nFLANNEL_IPV6=fd00:10::/48\n" + string(content) +
			"\n#FLANNEL_MTU=abc\n# FLANNEL_IPV6_SUBNET=x\nDOCKER_OPTS=--mtu=1\n"
		padded := filepath.Join(dir, "padded.env")
		if err := os.WriteFile(padded, []byte(other), 0o644); err != nil {
			t.Fatal(err)
		}
		if got, err := Read(padded); err != nil || got != e {
			t.Errorf("Read(%q) = %+v, but with other lines around it %+v, %v", content, e, got, err)
		}
		// flannel's IPv6 lines after it set the IPv6 family and nothing else.
		dual := string(content) + "\nFLANNEL_IPV6_NETWORK=fd00:10::/48\nFLANNEL_IPV6_SUBNET=fd00:10:0:30::1/64\n"
		if err := os.WriteFile(padded, []byte(dual), 0o644); err != nil {
			t.Fatal(err)
		}
		want := e
		want.IPv6Network, want.IPv6Subnet = netip.MustParsePrefix("fd00:10::/48"), netip.MustParsePrefix("fd00:10:0:30::1/64")
		if got, err := Read(padded); err != nil || got != want {
			t.Errorf("Read(%q) = %+v, but with IPv6 lines after it %+v, %v; want %+v", content, e, got, err, want)
		}

		v4, v6 := e.Network.IsValid(), e.IPv6Network.IsValid()
		if v4 != e.Subnet.IsValid() || v6 != e.IPv6Subnet.IsValid() || !v4 && !v6 {
			return // not a file Write would write: callers check for what is missing
		}
		checkWriteRead(t, filepath.Join(dir, "written.env"), e)
	})
}

// FuzzWriteRead: whatever Write writes, Read reads back equal, and Write
// leaves only the file behind, readable by all as flannel's is.
func FuzzWriteRead(f *testing.F) {
	f.Fuzz(func(t *testing.T, network, subnet []byte, networkBits, subnetBits uint8, mtu int, ipMasq bool) {
		prefix := func(b []byte, bits uint8) (netip.Prefix, bool) {
			a, ok := netip.AddrFromSlice(b)
			p := netip.PrefixFrom(a, int(bits))
			return p, ok && p.IsValid()
		}
		n, ok1 := prefix(network, networkBits)
		s, ok2 := prefix(subnet, subnetBits)
		if !ok1 || !ok2 {
			return
		}
		dir := t.TempDir()
		checkWriteRead(t, filepath.Join(dir, "subnet.env"), Env{Network: n, Subnet: s, MTU: mtu, IPMasq: ipMasq})
		if names := dirNames(t, dir); len(names) != 1 || names[0] != "subnet.env" {
			t.Errorf("after Write the directory holds %q, want only subnet.env", names)
		}
	})
}

// FuzzWriteReadDualStack is FuzzWriteRead with both families: each one is
// written when whole (its network and subnet valid) and read back equal;
// half a family, or none, is refused and leaves nothing behind.
func FuzzWriteReadDualStack(f *testing.F) {
	f.Fuzz(func(t *testing.T, network, subnet, network6, subnet6 []byte, bits, bits6 uint16, mtu int, ipMasq bool) {
		prefix := func(b []byte, bits uint8) netip.Prefix {
			a, _ := netip.AddrFromSlice(b)
			if p := netip.PrefixFrom(a, int(bits)); p.IsValid() {
				return p
			}
			return netip.Prefix{} // absent, as Read gives it
		}
		e := Env{
			Network: prefix(network, uint8(bits>>8)), Subnet: prefix(subnet, uint8(bits)),
			IPv6Network: prefix(network6, uint8(bits6>>8)), IPv6Subnet: prefix(subnet6, uint8(bits6)),
			MTU: mtu, IPMasq: ipMasq,
		}
		dir := t.TempDir()
		path := filepath.Join(dir, "subnet.env")
		v4, v6 := e.Network.IsValid(), e.IPv6Network.IsValid()
		if whole := v4 == e.Subnet.IsValid() && v6 == e.IPv6Subnet.IsValid() && (v4 || v6); !whole {
			if err := Write(path, e); err == nil || !strings.Contains(err.Error(), path) {
				t.Errorf("Write(%+v) = %v, want an error naming %s", e, err, path)
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Errorf("a refused Write left %q", names)
			}
			return
		}
		checkWriteRead(t, path, e)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		// flanneld's order, each family's lines only when it is there.
		var want []string
		if v4 {
			want = append(want, "FLANNEL_NETWORK", "FLANNEL_SUBNET")
		}
		if v6 {
			want = append(want, "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET")
		}
		want = append(want, "FLANNEL_MTU", "FLANNEL_IPMASQ")
		var got []string
		for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
			k, _, _ := strings.Cut(line, "=")
			got = append(got, k)
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("Write(%+v) wrote %q, want the variables %q", e, got, want)
		}
	})
}

func checkWriteRead(t *testing.T, path string, e Env) {
	t.Helper()
	if err := Write(path, e); err != nil {
		t.Fatalf("Write(%+v): %v", e, err)
	}
	got, err := Read(path)
	if err != nil || got != e {
		b, _ := os.ReadFile(path)
		t.Fatalf("Write(%+v) then Read = %+v, %v; the file:\n%s", e, got, err, b)
	}
	if fi, err := os.Stat(path); err != nil {
		t.Error(err)
	} else if fi.Mode() != 0o644 {
		t.Errorf("Write(%+v): file mode %v, want -rw-r--r--", e, fi.Mode())
	}
}
