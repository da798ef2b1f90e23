// Package systemd holds vtepd's systemd units; its test checks them with
// systemd's own parser.
package systemd

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// verify runs `systemd-analyze verify` on unit with the unit search path set
// to dir, and fails the test on any complaint: verify exits 0 after
// warnings such as an unknown key, which are mistakes all the same.
func verify(t *testing.T, dir, unit string) {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("skipping: systemd-analyze not installed (Debian package systemd)")
	}
	cmd := exec.Command("systemd-analyze", "verify", "--man=no", unit)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":", "SYSTEMD_LOG_COLOR=0")
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
	}
}

// install copies a unit file into dir, with the paths of the programs it
// runs, which verify requires to exist, replaced by this test's binary.
func install(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := strings.NewReplacer("/usr/local/bin/vtepd", self, "ExecStart=dockerd ", "ExecStart="+self+" ").Replace(string(b))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestUnitVerifies(t *testing.T) {
	dir := t.TempDir()
	install(t, "vtepd.service", filepath.Join(dir, "vtepd.service"))
	verify(t, dir, "vtepd.service")
}

// TestDockerDropInVerifies: the drop-in, applied to a docker.service like
// Debian's, leaves a unit systemd accepts.
func TestDockerDropInVerifies(t *testing.T) {
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	docker := "[Unit]\nDescription=Docker\n[Service]\nType=notify\nExecStart=" + self + " -H fd://\n"
	if err := os.WriteFile(filepath.Join(dir, "docker.service"), []byte(docker), 0o644); err != nil {
		t.Fatal(err)
	}
	install(t, "vtepd.service", filepath.Join(dir, "vtepd.service"))
	install(t, "docker.service.d/vtepd.conf", filepath.Join(dir, "docker.service.d", "vtepd.conf"))
	verify(t, dir, "docker.service")
}

// settings reads a unit's Key=Value lines (comments and sections dropped).
func settings(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			out[k] = append(out[k], v)
		}
	}
	return out
}

// TestUnitContract: the settings the rest of vtepd relies on. READY=1 and
// the watchdog need Type=notify and WatchdogSec; the capabilities are the
// two vtepd uses and no more; /proc/sys/net must stay writable.
func TestUnitContract(t *testing.T) {
	s := settings(t, "vtepd.service")
	want := map[string]string{
		"Type":                  "notify",
		"NotifyAccess":          "main",
		"ExecStart":             "/usr/local/bin/vtepd run",
		"WatchdogSec":           "30s",
		"TimeoutStartSec":       "infinity",
		"CapabilityBoundingSet": "CAP_NET_ADMIN CAP_NET_RAW",
		"NoNewPrivileges":       "yes",
		"EnvironmentFile":       "-/etc/default/vtepd",
	}
	for k, v := range want {
		if !slices.Equal(s[k], []string{v}) {
			t.Errorf("%s=%q, want %q", k, s[k], v)
		}
	}
	for _, k := range []string{"ProtectKernelTunables", "ProcSubset"} {
		if _, ok := s[k]; ok {
			t.Errorf("%s is set: vtepd writes the VXLAN device's sysctls under /proc/sys/net", k)
		}
	}
}

// TestMakeInstall: `make install` puts the binary, the unit and the drop-in
// where systemd finds them, with the unit's paths following PREFIX, and an
// example environment file readable by root alone (it may hold etcd
// credentials).
func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("skipping: make not installed")
	}
	dest := t.TempDir()
	cmd := exec.Command("make", "-C", "../..", "install", "DESTDIR="+dest, "PREFIX=/opt/vtepd")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	for path, mode := range map[string]os.FileMode{
		"opt/vtepd/bin/vtepd":                            0o755,
		"etc/systemd/system/vtepd.service":               0o644,
		"etc/systemd/system/docker.service.d/vtepd.conf": 0o644,
		"etc/default/vtepd":                              0o600,
	} {
		fi, err := os.Stat(filepath.Join(dest, path))
		if err != nil {
			t.Errorf("not installed: %v", err)
			continue
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), mode)
		}
	}
	s := settings(t, filepath.Join(dest, "etc/systemd/system/vtepd.service"))
	if !slices.Equal(s["ExecStart"], []string{"/opt/vtepd/bin/vtepd run"}) {
		t.Errorf("installed unit runs %q, want /opt/vtepd/bin/vtepd run", s["ExecStart"])
	}
	dropIn, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system/docker.service.d/vtepd.conf"))
	if err != nil || !strings.Contains(string(dropIn), "/opt/vtepd/bin/vtepd docker-opts") {
		t.Errorf("installed drop-in does not run /opt/vtepd/bin/vtepd docker-opts: %v\n%s", err, dropIn)
	}
}
