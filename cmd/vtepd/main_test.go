package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// These tests never start the agent. Every `run` below fails validation
// before agent.Run; as a second guard, each also gives an HTTP address that
// is valid but not this machine's (TEST-NET-2, never on the root
// namespace), so that a validation bug makes agent.Run fail in its first
// step, binding that socket, instead of touching the host.
var agentGuard = []string{"--http-addr=198.51.100.254:9742"}

// clearEnv unsets every VTEPD_* and FLANNELD_* variable for the test, so
// that the environment the tests run in cannot change their outcome.
func clearEnv(t *testing.T) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "VTEPD_") || strings.HasPrefix(k, "FLANNELD_") {
			t.Setenv(k, "") // restores the old value after the test
			os.Unsetenv(k)
		}
	}
}

func vtepd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = realMain(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// runCmd runs `vtepd run` with args and the agent guard.
func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return vtepd(t, append(append([]string{"run"}, agentGuard...), args...)...)
}

func TestVersion(t *testing.T) {
	clearEnv(t)
	// Should --version fail to stop it, the agent stops at this address.
	t.Setenv("VTEPD_HTTP_ADDR", "198.51.100.254:9742")
	// flanneld's -version and --version, on vtepd with no command too.
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}, {"run", "--version"}, {"--version", "--iface", "eth0"}} {
		code, stdout, stderr := vtepd(t, args...)
		if code != 0 || stdout != "vtepd dev\n" || stderr != "" {
			t.Errorf("vtepd %q = %d, stdout %q, stderr %q; want 0, %q, nothing", args, code, stdout, stderr, "vtepd dev\n")
		}
	}
	// As in flanneld, --version is read before the environment, so a bad
	// variable does not stop it.
	t.Setenv("FLANNELD_IPTABLES_RESYNC", "soon")
	if code, stdout, _ := vtepd(t, "--version"); code != 0 || stdout != "vtepd dev\n" {
		t.Errorf("vtepd --version with a bad FLANNELD_IPTABLES_RESYNC = %d, %q", code, stdout)
	}
}

func TestUsage(t *testing.T) {
	clearEnv(t)
	for _, arg := range []string{"help", "-h", "-help", "--help"} {
		code, stdout, stderr := vtepd(t, arg)
		if code != 0 || stdout != "" || !strings.Contains(stderr, "usage: vtepd <command>") ||
			!strings.Contains(stderr, "no command runs the agent") || !strings.Contains(stderr, "version") {
			t.Errorf("vtepd %s = %d, stdout %q, stderr %q; want 0 and the usage on stderr", arg, code, stdout, stderr)
		}
	}
}

// TestBareCommandRunsTheAgent: vtepd with no command, with flanneld's flags
// in either dash style or none at all, runs the agent, as flanneld does.
// The agent is stopped in its first step by the guard address (given on
// the command line, or from the environment for the bare vtepd), which
// this machine does not have: that the bind was tried, after "vtepd
// starting", is what says the agent ran.
func TestBareCommandRunsTheAgent(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"-etcd-endpoints=http://127.0.0.1:2379", "-iface", "eth0", "-ip-masq"},
		{"--etcd-endpoints", "http://127.0.0.1:2379", "--iface=eth0", "--ip-masq"},
	} {
		clearEnv(t)
		t.Setenv("VTEPD_HTTP_ADDR", "198.51.100.254:9742")
		code, stdout, stderr := vtepd(t, args...)
		if code != 1 || stdout != "" {
			t.Errorf("vtepd %q = %d, stdout %q; want 1 (the guard address cannot be bound)\n%s", args, code, stdout, stderr)
		}
		for _, want := range []string{"vtepd starting", `"etcd_endpoints": ["http://127.0.0.1:2379"]`, "198.51.100.254:9742", "\nvtepd: agent: listen on --http-addr"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("vtepd %q: stderr does not say %q:\n%s", args, want, stderr)
			}
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	clearEnv(t)
	code, stdout, stderr := vtepd(t, "frobnicate", "--x")
	if code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	if stdout != "" || !strings.Contains(stderr, `unknown command "frobnicate"`) || !strings.Contains(stderr, "usage: vtepd") {
		t.Errorf("stdout %q, stderr %q; want the command named and the usage", stdout, stderr)
	}
}

func TestRunHelp(t *testing.T) {
	clearEnv(t)
	for _, arg := range []string{"-h", "--help"} {
		code, stdout, stderr := vtepd(t, "run", arg)
		if code != 0 {
			t.Errorf("vtepd run %s exits %d, want 0", arg, code)
		}
		for _, want := range []string{"usage: vtepd run", "-etcd-endpoints", "-public-ip", "-subnet-lease-renew-margin", "VTEPD_ETCD_ENDPOINTS"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("vtepd run %s: stderr does not mention %q:\n%s", arg, want, stderr)
			}
		}
		if stdout != "" {
			t.Errorf("vtepd run %s: stdout %q", arg, stdout)
		}
	}
}

func TestRunUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string // in stderr
	}{
		{"unknown flag", []string{"--bogus"}, []string{"-bogus"}},
		{"not an address", []string{"--public-ip", "nope"}, []string{"public-ip", `"nope"`}},
		{"IPv6 public ip", []string{"--public-ip", "2001:db8::1"}, []string{"public-ip", "IPv4"}},
		{"renew margin 0", []string{"--subnet-lease-renew-margin", "0"}, []string{"--subnet-lease-renew-margin", "0"}},
		{"renew margin negative", []string{"--subnet-lease-renew-margin=-5"}, []string{"--subnet-lease-renew-margin", "-5"}},
		{"renew margin a day", []string{"--subnet-lease-renew-margin", "1440"}, []string{"--subnet-lease-renew-margin", "1440"}},
		{"renew margin not a number", []string{"--subnet-lease-renew-margin", "soon"}, []string{"subnet-lease-renew-margin"}},
		{"lease ttl too short", []string{"--subnet-lease-ttl", "5s"}, []string{"--subnet-lease-ttl", "5s"}},
		{"log format", []string{"--log-format", "xml"}, []string{"--log-format", `"xml"`}},
		{"log level", []string{"--log-level", "loud"}, []string{"log-level"}},
		{"iface regex", []string{"--iface-regex", "eth("}, []string{"--iface-regex", `"eth("`}},
		{"empty endpoints", []string{"--etcd-endpoints", " , "}, []string{"--etcd-endpoints"}},
		{"extra argument", []string{"eth0"}, []string{`unexpected argument "eth0"`}},
		{"http addr without port", []string{"--http-addr", "127.0.0.1"}, []string{"--http-addr", `"127.0.0.1"`}},
		{"http addr bad port", []string{"--http-addr", "127.0.0.1:99999"}, []string{"--http-addr", "99999"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			code, stdout, stderr := runCmd(t, tt.args...)
			if code != 2 {
				t.Errorf("vtepd run %v exits %d, want 2; stderr:\n%s", tt.args, code, stderr)
			}
			if stdout != "" {
				t.Errorf("stdout %q", stdout)
			}
			if !strings.Contains(stderr, "vtepd run: ") {
				t.Errorf("stderr does not start the error with the command:\n%s", stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not name %q:\n%s", w, stderr)
				}
			}
			if strings.Contains(stderr, "vtepd starting") {
				t.Errorf("the agent was started:\n%s", stderr)
			}
		})
	}
}

func TestRunBadEnvironment(t *testing.T) {
	clearEnv(t)
	t.Setenv("VTEPD_PUBLIC_IP", "bad")
	code, stdout, stderr := runCmd(t)
	if code != 2 || stdout != "" {
		t.Errorf("exit %d, stdout %q; want 2 and nothing", code, stdout)
	}
	for _, w := range []string{"VTEPD_PUBLIC_IP", "--public-ip", `"bad"`} {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr does not name %s:\n%s", w, stderr)
		}
	}

	// Validation after parsing sees values from the environment too.
	clearEnv(t)
	t.Setenv("VTEPD_SUBNET_LEASE_RENEW_MARGIN", "0")
	if code, _, stderr := runCmd(t); code != 2 || !strings.Contains(stderr, "--subnet-lease-renew-margin") {
		t.Errorf("VTEPD_SUBNET_LEASE_RENEW_MARGIN=0: exit %d, stderr:\n%s", code, stderr)
	}
}

func TestRunFlagWinsOverBadEnvironment(t *testing.T) {
	clearEnv(t)
	// A bad value in the environment for a flag given on the command line
	// is never looked at; --log-format=xml stops the run before the agent.
	t.Setenv("VTEPD_PUBLIC_IP", "bad")
	code, _, stderr := runCmd(t, "--public-ip=198.51.100.7", "--log-format=xml")
	if code != 2 || strings.Contains(stderr, "VTEPD_PUBLIC_IP") || !strings.Contains(stderr, "--log-format") {
		t.Errorf("exit %d, stderr:\n%s\nwant 2, about --log-format only", code, stderr)
	}
}

func TestEnvName(t *testing.T) {
	for flagName, want := range map[string]string{
		"etcd-endpoints":            "VTEPD_ETCD_ENDPOINTS",
		"public-ip":                 "VTEPD_PUBLIC_IP",
		"subnet-lease-renew-margin": "VTEPD_SUBNET_LEASE_RENEW_MARGIN",
		"etcd-password":             "VTEPD_ETCD_PASSWORD",
		"device":                    "VTEPD_DEVICE",
	} {
		if got := envName(flagName); got != want {
			t.Errorf("envName(%q) = %q, want %q", flagName, got, want)
		}
	}
}

// testFlags is a flag set like the run command's, for parseFlags.
type testFlags struct {
	fs        *flag.FlagSet
	prefix    *string
	endpoints *listFlag
	publicIP  addrFlag
	margin    *int
	stderr    bytes.Buffer
}

func newTestFlags() *testFlags {
	f := &testFlags{endpoints: &listFlag{values: []string{"http://127.0.0.1:2379"}}}
	f.fs = newFlagSet("test", &f.stderr)
	f.prefix = f.fs.String("etcd-prefix", "/coreos.com/network", "")
	f.fs.Var(f.endpoints, "etcd-endpoints", "")
	f.fs.Var(&f.publicIP, "public-ip", "")
	f.margin = f.fs.Int("subnet-lease-renew-margin", 60, "")
	return f
}

func TestParseFlagsEnvironment(t *testing.T) {
	clearEnv(t)
	t.Setenv("VTEPD_ETCD_PREFIX", "/from/env")
	t.Setenv("VTEPD_PUBLIC_IP", "192.0.2.9")
	t.Setenv("VTEPD_SUBNET_LEASE_RENEW_MARGIN", "30")
	t.Setenv("VTEPD_ETCD_ENDPOINTS", "http://a:2379, http://b:2379")

	f := newTestFlags()
	if err := parseFlags(f.fs, nil); err != nil {
		t.Fatal(err)
	}
	if *f.prefix != "/from/env" || f.publicIP.String() != "192.0.2.9" || *f.margin != 30 ||
		!slices.Equal(f.endpoints.values, []string{"http://a:2379", "http://b:2379"}) {
		t.Errorf("from the environment: prefix %q, public ip %q, margin %d, endpoints %q",
			*f.prefix, f.publicIP.String(), *f.margin, f.endpoints.values)
	}

	// The command line wins, flag by flag.
	f = newTestFlags()
	if err := parseFlags(f.fs, []string{"--etcd-prefix=/from/cli", "--etcd-endpoints", "http://c:2379"}); err != nil {
		t.Fatal(err)
	}
	if *f.prefix != "/from/cli" || !slices.Equal(f.endpoints.values, []string{"http://c:2379"}) {
		t.Errorf("command line: prefix %q, endpoints %q; want /from/cli, [http://c:2379]", *f.prefix, f.endpoints.values)
	}
	if f.publicIP.String() != "192.0.2.9" || *f.margin != 30 {
		t.Errorf("flags not on the command line not taken from the environment: public ip %q, margin %d", f.publicIP.String(), *f.margin)
	}
}

func TestParseFlagsDefaults(t *testing.T) {
	clearEnv(t)
	f := newTestFlags()
	if err := parseFlags(f.fs, nil); err != nil {
		t.Fatal(err)
	}
	if *f.prefix != "/coreos.com/network" || f.publicIP.addr.IsValid() || *f.margin != 60 ||
		!slices.Equal(f.endpoints.values, []string{"http://127.0.0.1:2379"}) {
		t.Errorf("defaults changed: prefix %q, public ip %q, margin %d, endpoints %q", *f.prefix, f.publicIP.String(), *f.margin, f.endpoints.values)
	}
	// An empty variable counts as unset, as in flanneld: the default stays.
	t.Setenv("VTEPD_ETCD_PREFIX", "")
	t.Setenv("VTEPD_SUBNET_LEASE_RENEW_MARGIN", "")
	f = newTestFlags()
	if err := parseFlags(f.fs, nil); err != nil {
		t.Fatal(err)
	}
	if *f.prefix != "/coreos.com/network" || *f.margin != 60 {
		t.Errorf("VTEPD_ETCD_PREFIX= and VTEPD_SUBNET_LEASE_RENEW_MARGIN= gave prefix %q, margin %d; want the defaults", *f.prefix, *f.margin)
	}
}

func TestParseFlagsErrors(t *testing.T) {
	clearEnv(t)
	t.Setenv("VTEPD_SUBNET_LEASE_RENEW_MARGIN", "soon")
	f := newTestFlags()
	err := parseFlags(f.fs, nil)
	var ue usageError
	if !errors.As(err, &ue) {
		t.Fatalf("parseFlags = %v, want a usageError", err)
	}
	for _, w := range []string{"VTEPD_SUBNET_LEASE_RENEW_MARGIN", "--subnet-lease-renew-margin", `"soon"`} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %s", err, w)
		}
	}

	clearEnv(t)
	f = newTestFlags()
	if err := parseFlags(f.fs, []string{"--nope"}); !errors.As(err, &ue) || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown flag: %v, want a usageError naming it", err)
	}
	f = newTestFlags()
	if err := parseFlags(f.fs, []string{"-h"}); !errors.Is(err, flag.ErrHelp) || errors.As(err, &ue) {
		t.Errorf("-h: %v, want flag.ErrHelp, not a usage error", err)
	}
}

// secretFlag rejects every value and, like the flags in flags.go, says which
// value it rejected.
type secretFlag struct{}

func (secretFlag) String() string     { return "" }
func (secretFlag) Set(s string) error { return fmt.Errorf("%q is not accepted", s) }

func TestParseFlagsMasksPasswords(t *testing.T) {
	clearEnv(t)
	const secret = "hunter2-s3cret"
	t.Setenv("VTEPD_ETCD_PASSWORD", secret)

	// A flag that fails without quoting the value.
	fs := newFlagSet("test", io.Discard)
	fs.Int("etcd-password", 0, "")
	err := parseFlags(fs, nil)
	if err == nil {
		t.Fatal("parseFlags accepted a bad value")
	}
	if strings.Contains(err.Error(), secret) ||
		!strings.Contains(err.Error(), "VTEPD_ETCD_PASSWORD") || !strings.Contains(err.Error(), "--etcd-password") {
		t.Errorf("error %q: want the variable and flag named and the value left out", err)
	}

	// A flag whose error quotes the value it rejected.
	for _, secret := range []string{secret, `with"quote\and\tab	`} {
		t.Setenv("VTEPD_ETCD_PASSWORD", secret)
		fs = newFlagSet("test", io.Discard)
		fs.Var(secretFlag{}, "etcd-password", "")
		err = parseFlags(fs, nil)
		if err == nil {
			t.Fatal("parseFlags accepted a bad value")
		}
		msg := err.Error()
		for _, leak := range []string{secret, fmt.Sprintf("%q", secret), "quote"} {
			if strings.Contains(msg, leak) {
				t.Errorf("error %q echoes the password %q from the environment", msg, secret)
			}
		}
		// The reason is left out too: a flag's error may quote the value.
		if !strings.Contains(msg, "VTEPD_ETCD_PASSWORD") || !strings.Contains(msg, "--etcd-password") {
			t.Errorf("error %q: want the variable and the flag named", msg)
		}
	}

	// Other flags' values are shown: they help find the mistake.
	clearEnv(t)
	t.Setenv("VTEPD_ETCD_USER", "root:x")
	fs = newFlagSet("test", io.Discard)
	fs.Var(secretFlag{}, "etcd-user", "")
	if err := parseFlags(fs, nil); err == nil || !strings.Contains(err.Error(), `"root:x"`) {
		t.Errorf("error %v does not show the bad value of a flag that is not a password", err)
	}
}

func TestListFlag(t *testing.T) {
	clearEnv(t)
	endpoints := &listFlag{values: []string{"http://127.0.0.1:2379"}}
	if got := endpoints.String(); got != "http://127.0.0.1:2379" {
		t.Errorf("default String() = %q", got)
	}
	fs := newFlagSet("test", io.Discard)
	fs.Var(endpoints, "etcd-endpoints", "")
	err := parseFlags(fs, []string{
		"--etcd-endpoints", "http://a:2379",
		"--etcd-endpoints=http://b:2379,http://c:2379",
		"--etcd-endpoints", " http://d:2379 ,, ",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"http://a:2379", "http://b:2379", "http://c:2379", "http://d:2379"}
	if !slices.Equal(endpoints.values, want) {
		t.Errorf("values %q, want %q (the default replaced, the rest accumulated)", endpoints.values, want)
	}
	if got := endpoints.String(); got != strings.Join(want, ",") {
		t.Errorf("String() = %q", got)
	}

	// Without any Set the default stays.
	ifaces := &listFlag{values: []string{"eth0"}}
	fs = newFlagSet("test", io.Discard)
	fs.Var(ifaces, "iface", "")
	if err := parseFlags(fs, nil); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ifaces.values, []string{"eth0"}) {
		t.Errorf("unset list flag: %q, want the default", ifaces.values)
	}

	// An empty value clears the default.
	l := &listFlag{values: []string{"x"}}
	if err := l.Set(""); err != nil || len(l.values) != 0 {
		t.Errorf("Set(\"\") = %v, values %q; want none", err, l.values)
	}
}

func TestAddrFlag(t *testing.T) {
	var f addrFlag
	if f.String() != "" {
		t.Errorf("unset String() = %q", f.String())
	}
	if err := f.Set("198.51.100.7"); err != nil || f.String() != "198.51.100.7" {
		t.Errorf("Set(198.51.100.7) = %v, %q", err, f.String())
	}
	for _, bad := range []string{"", "nope", "198.51.100.256", "2001:db8::1", "::ffff:198.51.100.7", "198.51.100.7/24"} {
		g := addrFlag{}
		if err := g.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted %v", bad, g.addr)
		}
	}
}

func TestLogger(t *testing.T) {
	for _, format := range []string{"console", "json"} {
		var buf bytes.Buffer
		l := logFlags{format: format}
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		l.register(fs)
		if err := fs.Parse([]string{"--log-format", format}); err != nil {
			t.Fatal(err)
		}
		log, err := l.logger(&buf)
		if err != nil {
			t.Fatalf("%s: %v", format, err)
		}
		log.Debug("hidden")
		log.Info("shown")
		log.Sync()
		if out := buf.String(); !strings.Contains(out, "shown") || strings.Contains(out, "hidden") {
			t.Errorf("%s at the default level info: %q", format, out)
		}
		if format == "json" && !strings.HasPrefix(buf.String(), "{") {
			t.Errorf("json log line %q", buf.String())
		}
	}
}

// TestEnvironmentFileNamesRealFlags: every VTEPD_* variable the example
// environment file mentions, set or commented out, is a flag of vtepd run,
// so that the documented settings do what they say.
func TestEnvironmentFileNamesRealFlags(t *testing.T) {
	clearEnv(t)
	b, err := os.ReadFile("../../contrib/systemd/vtepd.env")
	if err != nil {
		t.Fatal(err)
	}
	_, _, help := vtepd(t, "run", "-h")
	names := regexp.MustCompile(`VTEPD_[A-Z_]+`).FindAllString(string(b), -1)
	if len(names) < 10 {
		t.Fatalf("found only %d VTEPD_ variables in vtepd.env", len(names))
	}
	for _, name := range names {
		flagName := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, "VTEPD_"), "_", "-"))
		if !strings.Contains(help, "  -"+flagName+" ") && !strings.Contains(help, "  -"+flagName+"\n") {
			t.Errorf("vtepd.env sets %s, but vtepd run has no --%s", name, flagName)
		}
	}
}
