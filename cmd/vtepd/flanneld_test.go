package main

import (
	"bufio"
	"errors"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/agent"
	"go.uber.org/zap/zapcore"
)

// onlyEnv leaves the test exactly env of the VTEPD_* and FLANNELD_*
// variables.
func onlyEnv(t *testing.T, env map[string]string) {
	t.Helper()
	clearEnv(t)
	for k, v := range env {
		t.Setenv(k, v)
	}
}

// parse runs parseRun, which checks flags and environment without starting
// anything.
func parse(t *testing.T, args ...string) (runSetup, error) {
	t.Helper()
	return parseRun(args, io.Discard)
}

func mustParse(t *testing.T, args ...string) runSetup {
	t.Helper()
	s, err := parse(t, args...)
	if err != nil {
		t.Fatalf("vtepd %q: %v", args, err)
	}
	return s
}

// wantUsageError checks that err is a usage error saying each of want.
func wantUsageError(t *testing.T, what string, err error, want ...string) {
	t.Helper()
	var ue usageError
	if err == nil || !errors.As(err, &ue) {
		t.Errorf("%s: error %v, want a usage error", what, err)
		return
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: error %q does not say %q", what, err, w)
		}
	}
}

// TestFlanneldCommandLine: flanneld's command line, in its single-dash
// style and in the double-dash one, means what it means to flanneld.
func TestFlanneldCommandLine(t *testing.T) {
	clearEnv(t)
	single := []string{"-etcd-endpoints=http://203.0.113.1:2379,http://203.0.113.2:2379", "-etcd-prefix=/overlay2/network",
		"-iface=eth1", "-iface", "198.51.100.11", "-iface-regex=^(eth|ens)[0-9]{1,2}$", "-public-ip=203.0.113.20",
		"-subnet-file=/run/flannel/overlay2.env", "-subnet-lease-renew-margin=120", "-ip-masq", "-etcd-username=flannel", "-etcd-password=pw"}
	double := make([]string, 0, len(single))
	for _, a := range single {
		if !strings.HasPrefix(a, "-") {
			double = append(double, a) // a value
			continue
		}
		name, value, hasValue := strings.Cut(a, "=")
		double = append(double, "-"+name)
		if hasValue {
			double = append(double, value)
		}
	}
	for _, args := range [][]string{single, double} {
		s := mustParse(t, args...)
		c := s.cfg
		if !slices.Equal(c.Etcd.Endpoints, []string{"http://203.0.113.1:2379", "http://203.0.113.2:2379"}) || c.EtcdPrefix != "/overlay2/network" ||
			!slices.Equal(c.Underlay.Ifaces, []string{"eth1", "198.51.100.11"}) || len(c.Underlay.IfaceRegexes) != 1 ||
			c.Underlay.IfaceRegexes[0].String() != "^(eth|ens)[0-9]{1,2}$" || c.Underlay.PublicIP.String() != "203.0.113.20" ||
			c.SubnetFile != "/run/flannel/overlay2.env" || c.RenewMargin != 2*time.Hour || !c.IPMasq ||
			c.Etcd.Username != "flannel" || string(c.Etcd.Password) != "pw" {
			t.Errorf("vtepd %q:\n%+v", args, c)
		}
		// What flanneld's command line does not set stays vtepd's default.
		if !c.ForwardRules || c.FirewallResync != agent.DefaultFirewallResync || c.HTTPAddr != agent.DefaultHTTPAddr || s.logs.level != zapcore.InfoLevel {
			t.Errorf("vtepd %q: forward rules %v, resync %s, http %q, level %s; want vtepd's defaults", args, c.ForwardRules, c.FirewallResync, c.HTTPAddr, s.logs.level)
		}
	}
}

// TestFlanneldAliases: flanneld's names for what vtepd spells differently,
// on the command line and from FLANNELD_*.
func TestFlanneldAliases(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(runSetup) bool
	}{
		{"iptables-forward-rules off", []string{"--iptables-forward-rules=false"}, nil, func(s runSetup) bool { return !s.cfg.ForwardRules }},
		{"iptables-forward-rules on", []string{"-iptables-forward-rules"}, nil, func(s runSetup) bool { return s.cfg.ForwardRules }},
		{"FLANNELD_IPTABLES_FORWARD_RULES", nil, map[string]string{"FLANNELD_IPTABLES_FORWARD_RULES": "false"}, func(s runSetup) bool { return !s.cfg.ForwardRules }},
		{"forward-rules off", []string{"--forward-rules=false"}, nil, func(s runSetup) bool { return !s.cfg.ForwardRules }},
		{"iptables-resync", []string{"--iptables-resync=12"}, nil, func(s runSetup) bool { return s.cfg.FirewallResync == 12*time.Second }},
		{"iptables-resync default", nil, nil, func(s runSetup) bool { return s.cfg.FirewallResync == 5*time.Second }},
		{"FLANNELD_IPTABLES_RESYNC", nil, map[string]string{"FLANNELD_IPTABLES_RESYNC": "1"}, func(s runSetup) bool { return s.cfg.FirewallResync == time.Second }},
		{"healthz-port alone: all addresses", []string{"--healthz-port=8285"}, nil, func(s runSetup) bool { return s.cfg.HTTPAddr == "0.0.0.0:8285" }},
		{"healthz-ip and -port", []string{"-healthz-ip", "127.0.0.1", "-healthz-port", "8285"}, nil, func(s runSetup) bool { return s.cfg.HTTPAddr == "127.0.0.1:8285" }},
		{"healthz-ip IPv6", []string{"--healthz-ip=::", "--healthz-port=8285"}, nil, func(s runSetup) bool { return s.cfg.HTTPAddr == "[::]:8285" }},
		{"healthz-port 0: off", []string{"--healthz-port=0"}, nil, func(s runSetup) bool { return s.cfg.HTTPAddr == "" }},
		{"healthz-ip with port 0: off", []string{"--healthz-ip=127.0.0.1", "--healthz-port=0"}, nil, func(s runSetup) bool { return s.cfg.HTTPAddr == "" }},
		{"FLANNELD_HEALTHZ_PORT 0: off", nil, map[string]string{"FLANNELD_HEALTHZ_PORT": "0"}, func(s runSetup) bool { return s.cfg.HTTPAddr == "" }},
		{"FLANNELD_HEALTHZ_*", nil, map[string]string{"FLANNELD_HEALTHZ_IP": "127.0.0.2", "FLANNELD_HEALTHZ_PORT": "9"}, func(s runSetup) bool { return s.cfg.HTTPAddr == "127.0.0.2:9" }},
		{"healthz-ip from flanneld's environment, port on the command line", []string{"--healthz-port=9"}, map[string]string{"FLANNELD_HEALTHZ_IP": "127.0.0.2"},
			func(s runSetup) bool { return s.cfg.HTTPAddr == "127.0.0.2:9" }},
		{"no healthz: vtepd's default", nil, nil, func(s runSetup) bool { return s.cfg.HTTPAddr == "127.0.0.1:9742" }},
		{"-v 0", []string{"-v", "0"}, nil, func(s runSetup) bool { return s.logs.level == zapcore.InfoLevel }},
		{"-v 3", []string{"-v=3"}, nil, func(s runSetup) bool { return s.logs.level == zapcore.InfoLevel }},
		{"-v 4", []string{"-v=4"}, nil, func(s runSetup) bool { return s.logs.level == zapcore.DebugLevel }},
		{"--v 10", []string{"--v", "10"}, nil, func(s runSetup) bool { return s.logs.level == zapcore.DebugLevel }},
		{"FLANNELD_V", nil, map[string]string{"FLANNELD_V": "4"}, func(s runSetup) bool { return s.logs.level == zapcore.DebugLevel }},
		{"-v below a VTEPD_LOG_LEVEL: the command line wins", []string{"-v=0"}, map[string]string{"VTEPD_LOG_LEVEL": "error"},
			func(s runSetup) bool { return s.logs.level == zapcore.InfoLevel }},
		{"VTEPD_LOG_LEVEL over FLANNELD_V", nil, map[string]string{"VTEPD_LOG_LEVEL": "warn", "FLANNELD_V": "4"}, func(s runSetup) bool { return s.logs.level == zapcore.WarnLevel }},
		{"--http-addr over FLANNELD_HEALTHZ_PORT", []string{"--http-addr=127.0.0.1:1"}, map[string]string{"FLANNELD_HEALTHZ_PORT": "2"},
			func(s runSetup) bool { return s.cfg.HTTPAddr == "127.0.0.1:1" }},
		{"VTEPD_HTTP_ADDR over FLANNELD_HEALTHZ_PORT", nil, map[string]string{"VTEPD_HTTP_ADDR": "127.0.0.1:1", "FLANNELD_HEALTHZ_PORT": "2"},
			func(s runSetup) bool { return s.cfg.HTTPAddr == "127.0.0.1:1" }},
		{"--healthz-port over VTEPD_HTTP_ADDR", []string{"--healthz-port=2"}, map[string]string{"VTEPD_HTTP_ADDR": "127.0.0.1:1"},
			func(s runSetup) bool { return s.cfg.HTTPAddr == "0.0.0.0:2" }},
		{"--forward-rules over FLANNELD_IPTABLES_FORWARD_RULES", []string{"--forward-rules=false"}, map[string]string{"FLANNELD_IPTABLES_FORWARD_RULES": "true"},
			func(s runSetup) bool { return !s.cfg.ForwardRules }},
		{"VTEPD_FORWARD_RULES over FLANNELD_IPTABLES_FORWARD_RULES", nil, map[string]string{"VTEPD_FORWARD_RULES": "true", "FLANNELD_IPTABLES_FORWARD_RULES": "false"},
			func(s runSetup) bool { return s.cfg.ForwardRules }},
		{"refused flags at flanneld's defaults", []string{"--kube-subnet-mgr=false", "--set-node-network-unavailable", "--kube-annotation-prefix=flannel.alpha.coreos.com",
			"--log_backtrace_at=:0", "--vmodule=", "--persistent-mac=false", "--subnet-dir=/run/flannel/networks"}, map[string]string{"FLANNELD_USE_MULTI_CLUSTER_CIDR": "false"},
			func(s runSetup) bool { return s.cfg.HTTPAddr == agent.DefaultHTTPAddr }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			onlyEnv(t, tt.env)
			s := mustParse(t, tt.args...)
			if !tt.check(s) {
				t.Errorf("vtepd %q with %v: forward rules %v, resync %s, http %q, log level %s", tt.args, tt.env,
					s.cfg.ForwardRules, s.cfg.FirewallResync, s.cfg.HTTPAddr, s.logs.level)
			}
		})
	}
}

// TestFlanneldAliasConflicts: two spellings of one setting at the same
// place (both on the command line, or both in the environment) are refused,
// naming both, and so is --healthz-ip without a port.
func TestFlanneldAliasConflicts(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{"forward rules twice", []string{"--forward-rules", "--iptables-forward-rules=false"}, nil, []string{"--forward-rules and --iptables-forward-rules both given"}},
		{"forward rules agreeing", []string{"--forward-rules=false", "--iptables-forward-rules=false"}, nil, []string{"--forward-rules and --iptables-forward-rules both given"}},
		{"log level twice", []string{"-v=2", "--log-level=debug"}, nil, []string{"--log-level and --v both given"}},
		{"http addr and healthz port", []string{"--http-addr=127.0.0.1:1", "--healthz-port=2"}, nil, []string{"--http-addr and --healthz-port both given"}},
		{"http addr and healthz ip", []string{"--healthz-ip=127.0.0.1", "--http-addr=127.0.0.1:1"}, nil, []string{"--http-addr and --healthz-ip both given"}},
		{"both in VTEPD_", nil, map[string]string{"VTEPD_FORWARD_RULES": "true", "VTEPD_IPTABLES_FORWARD_RULES": "true"},
			[]string{"VTEPD_FORWARD_RULES (--forward-rules) and VTEPD_IPTABLES_FORWARD_RULES (--iptables-forward-rules) both given"}},
		{"http addr and healthz port in VTEPD_", nil, map[string]string{"VTEPD_HTTP_ADDR": "127.0.0.1:1", "VTEPD_HEALTHZ_PORT": "2"},
			[]string{"VTEPD_HTTP_ADDR (--http-addr) and VTEPD_HEALTHZ_PORT (--healthz-port) both given"}},
		{"healthz ip alone", []string{"--healthz-ip=0.0.0.0"}, nil, []string{"--healthz-ip given without --healthz-port", "127.0.0.1:9742"}},
		{"FLANNELD_HEALTHZ_IP alone", nil, map[string]string{"FLANNELD_HEALTHZ_IP": "0.0.0.0"}, []string{"FLANNELD_HEALTHZ_IP (--healthz-ip) given without --healthz-port"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			onlyEnv(t, tt.env)
			_, err := parse(t, tt.args...)
			wantUsageError(t, strings.Join(tt.args, " "), err, tt.want...)
		})
	}
}

// TestFlanneldBadValues: a bad value of one of flanneld's flags names the
// flag, and the variable when it came from one.
func TestFlanneldBadValues(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{"resync 0", []string{"--iptables-resync=0"}, nil, []string{"invalid value 0 for --iptables-resync: want at least 1 second"}},
		{"resync negative", []string{"-iptables-resync", "-3"}, nil, []string{"invalid value -3 for --iptables-resync"}},
		{"resync not a number", []string{"--iptables-resync=5s"}, nil, []string{"-iptables-resync", `"5s"`}},
		{"FLANNELD_IPTABLES_RESYNC 0", nil, map[string]string{"FLANNELD_IPTABLES_RESYNC": "0"}, []string{"invalid value 0 for FLANNELD_IPTABLES_RESYNC (--iptables-resync)"}},
		{"FLANNELD_IPTABLES_RESYNC not a number", nil, map[string]string{"FLANNELD_IPTABLES_RESYNC": "soon"}, []string{`environment FLANNELD_IPTABLES_RESYNC="soon": invalid value for --iptables-resync`}},
		{"VTEPD_IPTABLES_RESYNC 0", nil, map[string]string{"VTEPD_IPTABLES_RESYNC": "0"}, []string{"VTEPD_IPTABLES_RESYNC (--iptables-resync)"}},
		{"healthz port too big", []string{"--healthz-port=65536"}, nil, []string{"invalid value 65536 for --healthz-port: want 0 (off) to 65535"}},
		{"healthz port negative", []string{"--healthz-port=-1"}, nil, []string{"invalid value -1 for --healthz-port"}},
		{"FLANNELD_HEALTHZ_PORT too big", nil, map[string]string{"FLANNELD_HEALTHZ_PORT": "99999"}, []string{"invalid value 99999 for FLANNELD_HEALTHZ_PORT (--healthz-port)"}},
		{"FLANNELD_HEALTHZ_PORT not a number", nil, map[string]string{"FLANNELD_HEALTHZ_PORT": "http"}, []string{`environment FLANNELD_HEALTHZ_PORT="http": invalid value for --healthz-port`}},
		{"-v negative", []string{"-v=-1"}, nil, []string{"invalid value -1 for --v: want 0 or more"}},
		{"FLANNELD_V", nil, map[string]string{"FLANNELD_V": "loud"}, []string{`environment FLANNELD_V="loud": invalid value for --v`}},
		{"FLANNELD_IP_MASQ", nil, map[string]string{"FLANNELD_IP_MASQ": "yes"}, []string{`environment FLANNELD_IP_MASQ="yes": invalid value for --ip-masq`}},
		{"FLANNELD_PUBLIC_IP", nil, map[string]string{"FLANNELD_PUBLIC_IP": "eth0"}, []string{`environment FLANNELD_PUBLIC_IP="eth0": invalid value for --public-ip`}},
		{"FLANNELD_SUBNET_LEASE_RENEW_MARGIN", nil, map[string]string{"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "1440"},
			[]string{"invalid value 1440 for FLANNELD_SUBNET_LEASE_RENEW_MARGIN (--subnet-lease-renew-margin)"}},
		{"FLANNELD_IFACE_REGEX", nil, map[string]string{"FLANNELD_IFACE_REGEX": "eth("}, []string{`invalid value "eth(" for FLANNELD_IFACE_REGEX (--iface-regex)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			onlyEnv(t, tt.env)
			_, err := parse(t, tt.args...)
			wantUsageError(t, tt.name, err, tt.want...)
		})
	}

	// A password from flanneld's environment is never echoed.
	clearEnv(t)
	const secret = "hunter2-flanneld"
	t.Setenv("FLANNELD_ETCD_PASSWORD", secret)
	fs := newFlagSet("test", io.Discard)
	fs.Var(secretFlag{}, "etcd-password", "")
	_, err := parseFlagsEnv(fs, nil, envSpec{flanneld: map[string]bool{"etcd-password": true}})
	if err == nil || strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "hunter") ||
		!strings.Contains(err.Error(), "FLANNELD_ETCD_PASSWORD") || !strings.Contains(err.Error(), "--etcd-password") {
		t.Errorf("error %v: want the variable and the flag named, the password left out", err)
	}
}

// TestFlanneldRefused: every flanneld flag vtepd does not implement is
// refused by name with the reason, from the command line and from
// FLANNELD_* (and VTEPD_*), whatever the value but flanneld's default.
func TestFlanneldRefused(t *testing.T) {
	for _, r := range refusedFlags() {
		value := "x"
		if r.isBool {
			value = "true"
			if r.defaults[0] == "true" {
				value = "false"
			}
		}
		cli := []string{"--" + r.name + "=" + value}
		if r.isBool && value == "true" {
			cli = []string{"-" + r.name} // flanneld's style for a bool
		}
		clearEnv(t)
		_, err := parse(t, cli...)
		wantUsageError(t, strings.Join(cli, " "), err, "-"+r.name, "flanneld's --"+r.name+" is not supported by vtepd: "+r.why)

		for _, env := range []string{flanneldEnvName(r.name), envName(r.name)} {
			clearEnv(t)
			t.Setenv(env, value)
			_, err := parse(t)
			wantUsageError(t, env, err, "environment "+env+"=", "invalid value for --"+r.name, "not supported by vtepd: "+r.why)
		}
	}

	// Through the whole command, with no command as flanneld's unit runs
	// it: exit status 2, the flag named, the agent never started.
	for _, args := range [][]string{{"--kube-subnet-mgr"}, {"-kube-api-url=https://k8s:6443"}, {"--iface-can-reach", "198.51.100.1"}, {"-vmodule=main=4"}} {
		clearEnv(t)
		t.Setenv("VTEPD_HTTP_ADDR", "198.51.100.254:9742") // the agent guard, should the refusal fail
		code, stdout, stderr := vtepd(t, args...)
		name := strings.TrimLeft(strings.SplitN(args[0], "=", 2)[0], "-")
		if code != 2 || stdout != "" || !strings.Contains(stderr, "vtepd: ") || !strings.Contains(stderr, "flanneld's --"+name+" is not supported by vtepd") ||
			strings.Contains(stderr, "vtepd starting") {
			t.Errorf("vtepd %q = %d, stdout %q, stderr:\n%s\nwant 2 and the flag refused by name", args, code, stdout, stderr)
		}
	}
	clearEnv(t)
	t.Setenv("VTEPD_HTTP_ADDR", "198.51.100.254:9742")
	t.Setenv("FLANNELD_KUBE_SUBNET_MGR", "true")
	if code, _, stderr := vtepd(t); code != 2 || !strings.Contains(stderr, "FLANNELD_KUBE_SUBNET_MGR") || strings.Contains(stderr, "vtepd starting") {
		t.Errorf("vtepd with FLANNELD_KUBE_SUBNET_MGR=true = %d, stderr:\n%s", code, stderr)
	}
}

// TestEnvironmentPrecedence: the command line wins over VTEPD_*, which wins
// over FLANNELD_*; an empty variable of either counts as unset.
func TestEnvironmentPrecedence(t *testing.T) {
	endpoints := func(t *testing.T, env map[string]string, args ...string) []string {
		t.Helper()
		onlyEnv(t, env)
		return mustParse(t, args...).cfg.Etcd.Endpoints
	}
	const cli, vtepdEnv, flanneldEnv = "http://198.51.100.1:2379", "http://198.51.100.2:2379", "http://198.51.100.3:2379"
	all := map[string]string{"VTEPD_ETCD_ENDPOINTS": vtepdEnv, "FLANNELD_ETCD_ENDPOINTS": flanneldEnv}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"command line over both", all, []string{"--etcd-endpoints", cli}, cli},
		{"VTEPD_ over FLANNELD_", all, nil, vtepdEnv},
		{"FLANNELD_ alone", map[string]string{"FLANNELD_ETCD_ENDPOINTS": flanneldEnv}, nil, flanneldEnv},
		{"empty VTEPD_ is unset", map[string]string{"VTEPD_ETCD_ENDPOINTS": "", "FLANNELD_ETCD_ENDPOINTS": flanneldEnv}, nil, flanneldEnv},
		{"empty FLANNELD_ is unset", map[string]string{"FLANNELD_ETCD_ENDPOINTS": ""}, nil, "http://127.0.0.1:2379"},
		{"both empty", map[string]string{"VTEPD_ETCD_ENDPOINTS": "", "FLANNELD_ETCD_ENDPOINTS": ""}, nil, "http://127.0.0.1:2379"},
	}
	for _, tt := range tests {
		if got := endpoints(t, tt.env, tt.args...); !slices.Equal(got, []string{tt.want}) {
			t.Errorf("%s: endpoints %q, want %s", tt.name, got, tt.want)
		}
	}

	// A bad FLANNELD_ value under a good VTEPD_ one, or a flag, is never read.
	clearEnv(t)
	t.Setenv("FLANNELD_PUBLIC_IP", "bad")
	t.Setenv("VTEPD_PUBLIC_IP", "198.51.100.7")
	if s := mustParse(t); s.cfg.Underlay.PublicIP.String() != "198.51.100.7" {
		t.Errorf("VTEPD_PUBLIC_IP over a bad FLANNELD_PUBLIC_IP: %s", s.cfg.Underlay.PublicIP)
	}
	t.Setenv("VTEPD_PUBLIC_IP", "")
	if s := mustParse(t, "--public-ip=198.51.100.8"); s.cfg.Underlay.PublicIP.String() != "198.51.100.8" {
		t.Errorf("--public-ip over a bad FLANNELD_PUBLIC_IP: %s", s.cfg.Underlay.PublicIP)
	}
	_, err := parse(t)
	wantUsageError(t, "FLANNELD_PUBLIC_IP=bad alone", err, `environment FLANNELD_PUBLIC_IP="bad": invalid value for --public-ip`)

	// One value per variable, as flanneld: FLANNELD_IFACE_REGEX is one
	// expression, commas and all.
	clearEnv(t)
	t.Setenv("FLANNELD_IFACE_REGEX", "^(eth|ens)[0-9]{1,2}$")
	if s := mustParse(t); len(s.cfg.Underlay.IfaceRegexes) != 1 || s.cfg.Underlay.IfaceRegexes[0].String() != "^(eth|ens)[0-9]{1,2}$" {
		t.Errorf("FLANNELD_IFACE_REGEX with a comma: %v", s.cfg.Underlay.IfaceRegexes)
	}
}

// TestFlanneldStrayEnvironment: FLANNELD_* variables that no flag reads are
// ignored, as flanneld ignores them, and said.
func TestFlanneldStrayEnvironment(t *testing.T) {
	clearEnv(t)
	t.Setenv("FLANNELD_VERSION", "true")
	t.Setenv("FLANNELD_DEVICE", "vx0")
	t.Setenv("FLANNELD_NO_SUCH_FLAG", "1")
	t.Setenv("FLANNELD_EMPTY_ONE", "")
	s := mustParse(t)
	if s.version || s.cfg.DeviceName != "" {
		t.Errorf("FLANNELD_VERSION or FLANNELD_DEVICE was read: version %v, device %q", s.version, s.cfg.DeviceName)
	}
	want := []string{
		"FLANNELD_DEVICE ignored: --device is vtepd's flag, not flanneld's; set VTEPD_DEVICE",
		"FLANNELD_NO_SUCH_FLAG ignored: vtepd reads no flag from it",
		"FLANNELD_VERSION ignored: --version is read from the command line only, as flanneld reads it",
	}
	if !slices.Equal(s.warnings, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(s.warnings, "\n"), strings.Join(want, "\n"))
	}
}

// TestFlanneldEnvironmentFile: a flanneld host's environment file
// (/etc/default/flanneld, /run/flannel/options.env), read as systemd's
// EnvironmentFile= reads it, configures vtepd unchanged.
func TestFlanneldEnvironmentFile(t *testing.T) {
	clearEnv(t)
	f, err := os.Open("testdata/flanneld.env")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("testdata/flanneld.env: %q", line)
		}
		t.Setenv(k, strings.Trim(v, `"`))
		n++
	}
	s := mustParse(t)
	c := s.cfg
	if !slices.Equal(c.Etcd.Endpoints, []string{"http://203.0.113.1:2379", "http://203.0.113.2:2379"}) || c.EtcdPrefix != "/overlay2/network" ||
		c.Etcd.Username != "flannel" || string(c.Etcd.Password) != "s3cret-from-flanneld" ||
		!slices.Equal(c.Underlay.Ifaces, []string{"eth1"}) || len(c.Underlay.IfaceRegexes) != 1 || c.Underlay.IfaceRegexes[0].String() != "^(eth|ens)[0-9]{1,2}$" ||
		c.Underlay.PublicIP.String() != "203.0.113.20" || c.SubnetFile != "/run/flannel/overlay2.env" || c.RenewMargin != 2*time.Hour ||
		!c.IPMasq || c.ForwardRules || c.FirewallResync != 10*time.Second || c.HTTPAddr != "127.0.0.1:8285" || s.logs.level != zapcore.DebugLevel {
		t.Errorf("from the %d variables of testdata/flanneld.env:\n%+v\nlog level %s", n, c, s.logs.level)
	}
	if len(s.warnings) != 0 {
		t.Errorf("warnings for a flanneld file: %q", s.warnings)
	}
}

// runFlagNames are the flags `vtepd run -h` lists.
func runFlagNames(t *testing.T) []string {
	t.Helper()
	clearEnv(t)
	_, _, help := vtepd(t, "run", "-h")
	var names []string
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9_.-]+)`).FindAllStringSubmatch(help, -1) {
		names = append(names, m[1])
	}
	if len(names) < 30 {
		t.Fatalf("vtepd run -h lists only %d flags:\n%s", len(names), help)
	}
	return names
}

// TestREADMEFlagTable: the README's table of `vtepd run`'s flags names
// every flag vtepd has and every flanneld flag, each in a row of its own
// where the first column holds it.
func TestREADMEFlagTable(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	start := strings.Index(readme, "### Flags of `vtepd run`")
	if start < 0 {
		t.Fatal("README has no section \"Flags of `vtepd run`\"")
	}
	section := readme[start:]
	if end := strings.Index(section[4:], "\n## "); end >= 0 {
		section = section[:end+4]
	}
	firstColumns := map[string]bool{}
	for _, line := range strings.Split(section, "\n") {
		if cells := strings.Split(line, "|"); len(cells) > 2 && strings.HasPrefix(line, "|") {
			for _, m := range regexp.MustCompile("`-?-([a-z0-9_.-]+)").FindAllStringSubmatch(cells[1], -1) {
				firstColumns[m[1]] = true
			}
		}
	}
	runFlags := runFlagNames(t)
	all := append(slices.Clone(runFlags), flanneldNames()...)
	slices.Sort(all)
	for _, name := range slices.Compact(all) {
		if !firstColumns[name] {
			t.Errorf("README's flag table has no row for --%s", name)
		}
	}
	for name := range firstColumns {
		if !slices.Contains(runFlags, name) {
			t.Errorf("README's flag table has a row for --%s, which vtepd run does not have", name)
		}
	}
}

// TestRunHelpFlanneld: the help says where flanneld's flags and
// environment fit in.
func TestRunHelpFlanneld(t *testing.T) {
	clearEnv(t)
	_, _, help := vtepd(t, "run", "-h")
	for _, want := range []string{"or: vtepd [flags]", "FLANNELD_<FLAG>", "-iptables-forward-rules", "flanneld's name for --forward-rules",
		"-healthz-port", "-kube-subnet-mgr", "not supported: vtepd takes subnets from etcd only", "-v int"} {
		if !strings.Contains(help, want) {
			t.Errorf("vtepd run -h does not say %q", want)
		}
	}
}
