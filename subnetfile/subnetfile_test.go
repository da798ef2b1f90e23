package subnetfile

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var testEnv = Env{
	Network: netip.MustParsePrefix("10.5.0.0/16"),
	Subnet:  netip.MustParsePrefix("10.5.48.1/24"),
	MTU:     1450,
	IPMasq:  false,
}

// flannelFile is what flanneld writes for testEnv.
const flannelFile = "FLANNEL_NETWORK=10.5.0.0/16\n" +
	"FLANNEL_SUBNET=10.5.48.1/24\n" +
	"FLANNEL_MTU=1450\n" +
	"FLANNEL_IPMASQ=false\n"

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "subnet.env")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// dirNames lists dir, failing the test on error.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestWriteContent(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "subnet.env")
	if err := Write(path, testEnv); err != nil {
		t.Fatal(err)
	}
	expectFlannelFile(t, path, "a new file")
	if names := dirNames(t, dir); len(names) != 1 || names[0] != "subnet.env" {
		t.Errorf("directory holds %q, want only subnet.env (no temporary files)", names)
	}
}

func TestWriteIPMasqTrue(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	e := testEnv
	e.IPMasq = true
	if err := Write(path, e); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Replace(flannelFile, "FLANNEL_IPMASQ=false", "FLANNEL_IPMASQ=true", 1); string(got) != want {
		t.Errorf("file content:\n%s\nwant:\n%s", got, want)
	}
}

func TestWriteReadRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	for _, e := range []Env{
		testEnv,
		{Network: netip.MustParsePrefix("172.16.0.0/12"), Subnet: netip.MustParsePrefix("172.16.200.1/28"), MTU: 8950, IPMasq: true},
	} {
		if err := Write(path, e); err != nil {
			t.Fatal(err)
		}
		got, err := Read(path)
		if err != nil {
			t.Fatal(err)
		}
		if got != e {
			t.Errorf("Read after Write = %+v, want %+v", got, e)
		}
	}
}

func TestWriteCreatesDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "flannel", "subnet.env")
	if err := Write(path, testEnv); err != nil {
		t.Fatal(err)
	}
	if got, err := Read(path); err != nil || got != testEnv {
		t.Errorf("Read = %+v, %v; want %+v", got, err, testEnv)
	}
}

func TestWriteReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "subnet.env")
	old := "FLANNEL_NETWORK=10.9.0.0/16\nFLANNEL_SUBNET=10.9.1.1/24\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\nFLANNEL_IPV6_NETWORK=fd00::/48\n"
	if err := os.WriteFile(path, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	// A reader holding the old file keeps seeing it whole: the new one is
	// renamed into place, not written over it.
	held, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	if err := Write(path, testEnv); err != nil {
		t.Fatal(err)
	}
	expectFlannelFile(t, path, "a 0600 file replaced")
	oldSeen := make([]byte, len(old)+10)
	n, _ := held.Read(oldSeen)
	if string(oldSeen[:n]) != old {
		t.Errorf("a reader of the old file saw %q, want the old content %q", oldSeen[:n], old)
	}
	if names := dirNames(t, dir); len(names) != 1 || names[0] != "subnet.env" {
		t.Errorf("directory holds %q, want only subnet.env", names)
	}
}

func TestWriteFailureLeavesNoTempFile(t *testing.T) {
	dir := t.TempDir()
	// The path is a non-empty directory: the final rename fails.
	path := filepath.Join(dir, "subnet.env")
	if err := os.MkdirAll(filepath.Join(path, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := Write(path, testEnv)
	if err == nil {
		t.Fatal("Write onto a directory succeeded")
	}
	if !strings.HasPrefix(err.Error(), "subnetfile: ") {
		t.Errorf("error %q does not say where it comes from", err)
	}
	if names := dirNames(t, dir); len(names) != 1 || names[0] != "subnet.env" {
		t.Errorf("after a failed Write the directory holds %q, want only subnet.env (the temporary file removed)", names)
	}
}

func TestRead(t *testing.T) {
	path := writeFile(t, `# written by flanneld
FLANNEL_NETWORK=10.5.0.0/16

FLANNEL_SUBNET=10.5.48.1/24
  FLANNEL_MTU=1450  
FLANNEL_IPMASQ=true
FLANNEL_IPV6_NETWORK=fd00:10::/48
FLANNEL_IPV6_SUBNET=fd00:10:0:30::1/64
#FLANNEL_MTU=abc
# FLANNEL_MTU=abc
SOMETHING_ELSE=whatever=with=equals
a line without an equals sign
`)
	got, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	want := testEnv
	want.IPMasq = true
	want.IPv6Network = netip.MustParsePrefix("fd00:10::/48")
	want.IPv6Subnet = netip.MustParsePrefix("fd00:10:0:30::1/64")
	if got != want {
		t.Errorf("Read = %+v, want %+v", got, want)
	}
}

// flannelDualStackFile is flannel's documented dual-stack subnet file
// (Documentation/configuration.md), in flanneld's order.
const flannelDualStackFile = "FLANNEL_NETWORK=10.42.0.0/16\n" +
	"FLANNEL_SUBNET=10.42.0.1/24\n" +
	"FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n" +
	"FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n" +
	"FLANNEL_MTU=1450\n" +
	"FLANNEL_IPMASQ=true\n"

func TestWriteDualStackAndIPv6Only(t *testing.T) {
	dual := Env{
		Network:     netip.MustParsePrefix("10.42.0.0/16"),
		Subnet:      BridgeSubnet(netip.MustParsePrefix("10.42.0.0/24")),
		IPv6Network: netip.MustParsePrefix("2001:cafe:42::/56"),
		IPv6Subnet:  BridgeSubnet(netip.MustParsePrefix("2001:cafe:42::/64")),
		MTU:         1450,
		IPMasq:      true,
	}
	v6only := Env{
		IPv6Network: netip.MustParsePrefix("fd00:10::/48"),
		IPv6Subnet:  netip.MustParsePrefix("fd00:10:0:30::1/64"),
		MTU:         1430,
	}
	for _, tt := range []struct {
		name string
		e    Env
		want string
	}{
		{"dual-stack", dual, flannelDualStackFile},
		// flanneld with EnableIPv4 false writes no IPv4 line at all.
		{"IPv6-only", v6only, "FLANNEL_IPV6_NETWORK=fd00:10::/48\nFLANNEL_IPV6_SUBNET=fd00:10:0:30::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "subnet.env")
			if err := Write(path, tt.e); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("content:\n%s\nwant flanneld's:\n%s", got, tt.want)
			}
			if back, err := Read(path); err != nil || back != tt.e {
				t.Errorf("Read = %+v, %v; want %+v", back, err, tt.e)
			}
		})
	}
}

func TestWriteRefusesHalfAFamily(t *testing.T) {
	v4, v4sub := netip.MustParsePrefix("10.5.0.0/16"), netip.MustParsePrefix("10.5.48.1/24")
	v6, v6sub := netip.MustParsePrefix("fd00:10::/48"), netip.MustParsePrefix("fd00:10:0:30::1/64")
	for _, tt := range []struct {
		name string
		e    Env
		says string
	}{
		{"nothing", Env{MTU: 1450}, "neither an IPv4 nor an IPv6 network"},
		{"network without subnet", Env{Network: v4, MTU: 1450}, "FLANNEL_NETWORK=10.5.0.0/16 without FLANNEL_SUBNET"},
		{"subnet without network", Env{Subnet: v4sub, MTU: 1450}, "FLANNEL_SUBNET=10.5.48.1/24 without FLANNEL_NETWORK"},
		{"IPv6 network without subnet", Env{Network: v4, Subnet: v4sub, IPv6Network: v6}, "FLANNEL_IPV6_NETWORK=fd00:10::/48 without FLANNEL_IPV6_SUBNET"},
		{"IPv6 subnet without network", Env{IPv6Subnet: v6sub}, "FLANNEL_IPV6_SUBNET=fd00:10:0:30::1/64 without FLANNEL_IPV6_NETWORK"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "subnet.env")
			err := Write(path, tt.e)
			if err == nil || !strings.Contains(err.Error(), tt.says) || !strings.Contains(err.Error(), path) {
				t.Fatalf("Write(%+v) = %v, want an error naming %s and saying %q", tt.e, err, path, tt.says)
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Errorf("a refused Write left %q", names)
			}
		})
	}
}

func TestReadIPv6(t *testing.T) {
	path := writeFile(t, flannelDualStackFile)
	got, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	want := Env{
		Network: netip.MustParsePrefix("10.42.0.0/16"), Subnet: netip.MustParsePrefix("10.42.0.1/24"),
		IPv6Network: netip.MustParsePrefix("2001:cafe:42::/56"), IPv6Subnet: netip.MustParsePrefix("2001:cafe:42::1/64"),
		MTU: 1450, IPMasq: true,
	}
	if got != want {
		t.Errorf("Read = %+v, want %+v", got, want)
	}
	// What flanneld reads back as its previous IPv6 subnet.
	if got.IPv6Subnet.Masked() != netip.MustParsePrefix("2001:cafe:42::/64") {
		t.Errorf("IPv6Subnet.Masked() = %s", got.IPv6Subnet.Masked())
	}
}

func TestReadNoFinalNewline(t *testing.T) {
	path := writeFile(t, strings.TrimSuffix(flannelFile, "\n"))
	if got, err := Read(path); err != nil || got != testEnv {
		t.Errorf("Read = %+v, %v; want %+v", got, err, testEnv)
	}
}

func TestReadBadValues(t *testing.T) {
	tests := []struct {
		name    string
		content string
		line    int
		key     string
	}{
		{"mtu", "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.48.1/24\nFLANNEL_MTU=abc\nFLANNEL_IPMASQ=false\n", 3, "FLANNEL_MTU"},
		{"network", "# comment\n\nFLANNEL_NETWORK=10.5.0.0\n", 3, "FLANNEL_NETWORK"},
		{"subnet", "FLANNEL_SUBNET=10.5.300.1/24\n", 1, "FLANNEL_SUBNET"},
		{"ipmasq", "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_IPMASQ=maybe\n", 2, "FLANNEL_IPMASQ"},
		{"empty mtu", "FLANNEL_MTU=\n", 1, "FLANNEL_MTU"},
		{"ipv6 network", "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_IPV6_NETWORK=fd00:10::\n", 2, "FLANNEL_IPV6_NETWORK"},
		{"ipv6 subnet", "FLANNEL_IPV6_SUBNET=fd00:10:0:30::1/129\n", 1, "FLANNEL_IPV6_SUBNET"},
		{"ipv6 subnet with a zone", "FLANNEL_IPV6_SUBNET=fe80::1%eth0/64\n", 1, "FLANNEL_IPV6_SUBNET"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, tt.content)
			got, err := Read(path)
			if err == nil {
				t.Fatalf("Read = %+v, want an error", got)
			}
			if got != (Env{}) {
				t.Errorf("Read returned %+v with its error", got)
			}
			msg := err.Error()
			value := strings.SplitN(strings.SplitN(tt.content, tt.key+"=", 2)[1], "\n", 2)[0]
			for _, want := range []string{path + ":" + strconv.Itoa(tt.line) + ":", tt.key, `"` + value + `"`} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not contain %q", msg, want)
				}
			}
		})
	}
}

func TestReadMissing(t *testing.T) {
	_, err := Read(filepath.Join(t.TempDir(), "nope.env"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Read of a missing file = %v, want fs.ErrNotExist", err)
	}
}

func TestBridgeSubnet(t *testing.T) {
	for in, want := range map[string]string{
		"10.5.48.0/24":  "10.5.48.1/24",
		"10.5.48.77/24": "10.5.48.1/24", // masked first
		"10.5.0.0/16":   "10.5.0.1/16",
		"10.5.48.16/28": "10.5.48.17/28",
	} {
		if got := BridgeSubnet(netip.MustParsePrefix(in)); got != netip.MustParsePrefix(want) {
			t.Errorf("BridgeSubnet(%s) = %s, want %s", in, got, want)
		}
	}
}

// expectFlannelFile checks that path holds flannel's subnet file for
// testEnv, mode 0644 as flannel writes it.
func expectFlannelFile(t *testing.T, path, when string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != flannelFile {
		t.Errorf("%s: content:\n%s\nwant flannel's:\n%s", when, got, flannelFile)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o644 {
		t.Errorf("%s: mode %v, want -rw-r--r--", when, fi.Mode())
	}
}
