package main

import (
	"flag"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/vtepd/vtepd/agent"
	"go.uber.org/zap/zapcore"
)

// flanneld's command line. vtepd with no command is `vtepd run`, so that a
// flanneld unit runs vtepd with its binary renamed: flanneld's flags keep
// their meaning, their FLANNELD_* variables are read as flanneld reads
// them, and each flanneld flag vtepd does not implement is refused by name
// with the reason, never ignored. The flags below are those of flanneld's
// main.go (and of the klog flags it copies), plus those older flanneld
// releases had, which its unit files may still carry.

// flanneldSame are flanneld's flags that vtepd has under the same name and
// meaning.
func flanneldSame() []string {
	return []string{
		"etcd-endpoints", "etcd-prefix", "etcd-keyfile", "etcd-certfile", "etcd-cafile", "etcd-username", "etcd-password",
		"iface", "iface-regex", "public-ip", "public-ipv6", "subnet-file", "subnet-lease-renew-margin", "ip-masq", "version",
	}
}

// refusedFlag is a flanneld flag vtepd does not implement. It is accepted
// at flanneld's default, which asks for nothing (a unit that spells out
// --kube-subnet-mgr=false runs as it did), and refused with any other
// value, naming the flag and why.
type refusedFlag struct {
	name   string
	isBool bool
	// defaults are the values that ask for nothing: flanneld's default,
	// and how klog prints it where that differs.
	defaults []string
	why      string
}

const kubeOnly = "it belongs to flanneld's Kubernetes subnet manager (--kube-subnet-mgr); vtepd takes subnets from etcd only"

func refusedFlags() []refusedFlag {
	return []refusedFlag{
		{"kube-subnet-mgr", true, []string{"false"}, "vtepd takes subnets from etcd only, not from Kubernetes node specs"},
		{"kube-api-url", false, []string{""}, kubeOnly},
		{"kubeconfig-file", false, []string{""}, kubeOnly},
		{"kube-annotation-prefix", false, []string{"flannel.alpha.coreos.com"}, kubeOnly},
		{"net-config-path", false, []string{"/etc/kube-flannel/net-conf.json"}, kubeOnly + ", and the network config from <etcd-prefix>/config"},
		{"set-node-network-unavailable", true, []string{"true"}, kubeOnly},
		{"use-multi-cluster-cidr", true, []string{"false"}, kubeOnly},
		{"persistent-mac", true, []string{"false"}, kubeOnly + "; vtepd always gives its device the VTEP MAC its lease published before"},
		{"iface-can-reach", false, []string{""}, "vtepd does not choose the interface by a route lookup: give --iface the interface that 'ip route get <address>' names"},
		{"vmodule", false, []string{""}, "vtepd's log has one level for all of it: use -v or --log-level"},
		{"log_backtrace_at", false, []string{"", ":0"}, "vtepd's log writes no stack traces at chosen lines"},
		{"listen", false, []string{""}, "flanneld's client/server mode, which flanneld itself no longer has"},
		{"remote", false, []string{""}, "flanneld's client/server mode, which flanneld itself no longer has"},
		{"remote-keyfile", false, []string{""}, "flanneld's client/server mode, which flanneld itself no longer has"},
		{"remote-certfile", false, []string{""}, "flanneld's client/server mode, which flanneld itself no longer has"},
		{"remote-cafile", false, []string{""}, "flanneld's client/server mode, which flanneld itself no longer has"},
		{"networks", false, []string{""}, "flanneld's multi-network mode, which flanneld itself no longer has: run one vtepd per network, each with its own --etcd-prefix, --subnet-file and VNI"},
		{"subnet-dir", false, []string{"/run/flannel/networks"}, "flanneld's multi-network mode, which flanneld itself no longer has: run one vtepd per network, each with its own --subnet-file"},
	}
}

// refusedValue is a refused flag on a flag set.
type refusedValue struct {
	refusedFlag
	value string
}

func (r *refusedValue) String() string { return r.value }

func (r *refusedValue) IsBoolFlag() bool { return r.isBool }

func (r *refusedValue) Set(s string) error {
	v := s
	if r.isBool {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not a boolean", s)
		}
		v = strconv.FormatBool(b)
	}
	for _, d := range r.defaults {
		if v == d {
			r.value = v
			return nil
		}
	}
	return fmt.Errorf("flanneld's --%s is not supported by vtepd: %s", r.name, r.why)
}

// flanneldFlags are flanneld's flags that vtepd spells differently or
// reads as flanneld does, registered on the run command's flag set
// beside vtepd's own.
type flanneldFlags struct {
	iptablesForwardRules *bool
	iptablesResync       *int
	healthzIP            *string
	healthzPort          *int
	verbosity            *int
	version              *bool
}

func (f *flanneldFlags) register(fs *flag.FlagSet) {
	f.iptablesForwardRules = fs.Bool("iptables-forward-rules", true, "flanneld's name for --forward-rules")
	f.iptablesResync = fs.Int("iptables-resync", int(agent.DefaultFirewallResync/time.Second), "seconds between checks that the firewall rules (forward and ip-masq) are in place, restoring any that are gone (flanneld's flag)")
	f.healthzIP = fs.String("healthz-ip", "0.0.0.0", "with --healthz-port: the address to serve HTTP on, as flanneld's health check (instead of --http-addr)")
	f.healthzPort = fs.Int("healthz-port", 0, "serve HTTP on --healthz-ip:<port> instead of --http-addr; 0 turns the server off (flanneld's flag)")
	f.verbosity = fs.Int("v", 0, "flanneld's (klog's) verbosity, instead of --log-level: 0 to 3 log at info, 4 and more at debug")
	f.version = fs.Bool("version", false, "print the version and exit (flanneld's flag; 'vtepd version' too)")
	for _, r := range refusedFlags() {
		fs.Var(&refusedValue{refusedFlag: r}, r.name, "flanneld's; not supported: "+r.why)
	}
}

// envSpec says which flags are read from FLANNELD_*: every flag of
// flanneld's, the refused ones included, so that a FLANNELD_KUBE_API_URL
// is refused as --kube-api-url would be. --version is the command line's
// only: flanneld reads it before its environment.
func (f *flanneldFlags) envSpec() envSpec {
	spec := envSpec{flanneld: map[string]bool{}, cliOnly: map[string]bool{"version": true},
		skipEnv: func() bool { return *f.version }}
	for _, name := range flanneldNames() {
		spec.flanneld[name] = true
	}
	return spec
}

// flanneldNames are all of flanneld's flags vtepd knows.
func flanneldNames() []string {
	names := flanneldSame()
	names = append(names, "iptables-forward-rules", "iptables-resync", "healthz-ip", "healthz-port", "v")
	for _, r := range refusedFlags() {
		names = append(names, r.name)
	}
	return names
}

// forwardRules is --forward-rules, or flanneld's --iptables-forward-rules.
func (f *flanneldFlags) forwardRules(p parsed, vtepd *bool) (bool, error) {
	which, err := p.pick("forward-rules", "iptables-forward-rules")
	if which == "iptables-forward-rules" {
		return *f.iptablesForwardRules, err
	}
	return *vtepd, err
}

// logLevel is --log-level, or flanneld's -v. klog's verbosity only adds
// detail above info, and vtepd's log has one level of detail above info,
// debug, which logs every miss: so 0 to 3 are info, and 4 and more, the
// levels one asks for when debugging, are debug.
func (f *flanneldFlags) logLevel(p parsed, vtepd zapcore.Level) (zapcore.Level, error) {
	which, err := p.pick("log-level", "v")
	switch {
	case err != nil || which != "v":
		return vtepd, err
	case *f.verbosity < 0:
		return vtepd, usageError{fmt.Errorf("invalid value %d for %s: want 0 or more", *f.verbosity, p.where("v"))}
	case *f.verbosity >= 4:
		return zapcore.DebugLevel, nil
	default:
		return zapcore.InfoLevel, nil
	}
}

// httpAddr is where the HTTP server listens: vtepd's --http-addr, or
// flanneld's --healthz-ip and --healthz-port, which count as one spelling
// of the same setting (their source is the higher of theirs). As in
// flanneld, port 0 is off and the address defaults to 0.0.0.0. The
// address alone is refused: flanneld serves nothing without a port, and
// taking vtepd's default port would expose the server on an address the
// operator never asked for it on.
func (f *flanneldFlags) httpAddr(p parsed, vtepd string) (string, error) {
	pair := "healthz-port"
	if p.origins["healthz-ip"].source > p.origins["healthz-port"].source {
		pair = "healthz-ip"
	}
	which, err := p.pick("http-addr", pair)
	switch {
	case err != nil:
		return "", err
	case which != pair:
		return vtepd, nil
	case !p.set("healthz-port"):
		return "", usageError{fmt.Errorf("%s given without --healthz-port: flanneld serves nothing then (port 0 is off); give the port too, or leave both out for --http-addr (default %s)",
			p.where("healthz-ip"), agent.DefaultHTTPAddr)}
	case *f.healthzPort < 0 || *f.healthzPort > 65535:
		return "", usageError{fmt.Errorf("invalid value %d for %s: want 0 (off) to 65535", *f.healthzPort, p.where("healthz-port"))}
	case *f.healthzPort == 0:
		return "", nil
	}
	return net.JoinHostPort(*f.healthzIP, strconv.Itoa(*f.healthzPort)), nil
}
