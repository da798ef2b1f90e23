package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"strings"

	"github.com/vtepd/vtepd/subnetfile"
)

// dockerOptsCommand turns the subnet file into dockerd's options, as
// flannel's mk-docker-opts.sh does: the bridge's address and the MTU, and
// --ip-masq=false when vtepd masquerades, so that Docker's own masquerade
// (every packet from the bridge's subnet not leaving through docker0) does
// not rewrite traffic between containers of different hosts.
//
// With --flannel it writes what mk-docker-opts.sh writes, variable for
// variable, so that units and scripts made for flannel read it unchanged.
//
// An overlay with IPv6 (FLANNEL_IPV6_SUBNET) adds what dockerd needs to
// give containers addresses of the host's IPv6 subnet: --ipv6 and
// --fixed-cidr-v6 with the subnet (dockerd puts its first address, the
// subnet file's, on the bridge). mk-docker-opts.sh knows no IPv6; in the
// --flannel form these are two variables of vtepd's, DOCKER_OPT_IPV6 and
// DOCKER_OPT_FIXED_CIDR_V6, in the combined one too. An IPv6-only overlay
// has no FLANNEL_SUBNET, and no --bip: Docker's bridge keeps an IPv4
// subnet of Docker's choosing, which the overlay does not carry.
func dockerOptsCommand(args []string, stdout, stderr io.Writer) error {
	fset := newFlagSet("docker-opts", stderr)
	path := fset.String("subnet-file", subnetfile.DefaultPath, "the subnet file vtepd writes when it is ready (mk-docker-opts.sh -f)")
	asJSON := fset.Bool("json", false, "print the fragment of /etc/docker/daemon.json instead of command-line options")
	envKey := fset.String("env", "", "print one line KEY=\"options\" for a systemd EnvironmentFile, e.g. --env DOCKER_OPTS; with --flannel, the name of the combined variable (mk-docker-opts.sh -k; default DOCKER_OPTS)")
	flannel := fset.Bool("flannel", false, "write the variables of flannel's mk-docker-opts.sh: DOCKER_OPT_BIP, DOCKER_OPT_IPMASQ, DOCKER_OPT_MTU and the combined DOCKER_OPTS; with IPv6 in the overlay, vtepd adds DOCKER_OPT_IPV6 (--ipv6) and DOCKER_OPT_FIXED_CIDR_V6 (--fixed-cidr-v6), which the script does not have")
	individual := fset.Bool("individual", false, "with --flannel: the DOCKER_OPT_* variables only (mk-docker-opts.sh -i)")
	combined := fset.Bool("combined", false, "with --flannel: the combined variable only (mk-docker-opts.sh -c)")
	noMasq := fset.Bool("no-ip-masq", false, "with --flannel: leave --ip-masq out, so Docker keeps its default (mk-docker-opts.sh -m)")
	out := fset.String("out", "", "write to this file instead of standard output (mk-docker-opts.sh -d)")
	if err := parseFlags(fset, args); err != nil {
		return err
	}
	switch {
	case *asJSON && (*envKey != "" || *flannel):
		return usageError{errors.New("--json excludes --env and --flannel")}
	case !*flannel && (*individual || *combined || *noMasq):
		return usageError{errors.New("--individual, --combined and --no-ip-masq need --flannel")}
	case *envKey != "" && !shellName.MatchString(*envKey):
		return usageError{fmt.Errorf("invalid value %q for --env: want a variable name such as DOCKER_OPTS", *envKey)}
	}
	env, err := subnetfile.Read(*path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w (vtepd writes it once it is ready: start dockerd after vtepd)", err)
	}
	if err != nil {
		return err
	}
	switch {
	case !env.Subnet.IsValid() && !env.IPv6Subnet.IsValid():
		return fmt.Errorf("%s: FLANNEL_SUBNET is missing (and FLANNEL_IPV6_SUBNET too)", *path)
	case env.MTU <= 0:
		return fmt.Errorf("%s: FLANNEL_MTU is missing", *path)
	}
	var b bytes.Buffer
	switch {
	case *asJSON:
		frag := map[string]any{"mtu": env.MTU}
		if env.Subnet.IsValid() {
			frag["bip"] = env.Subnet.String()
		}
		if env.IPMasq {
			frag["ip-masq"] = false
		}
		if env.IPv6Subnet.IsValid() {
			frag["ipv6"], frag["fixed-cidr-v6"] = true, fixedCIDRv6(env)
		}
		j, err := json.MarshalIndent(frag, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s\n", j)
	case *flannel:
		key := *envKey
		if key == "" {
			key = "DOCKER_OPTS"
		}
		writeFlannelOpts(&b, env, key, !*combined || *individual, !*individual || *combined, !*noMasq)
	default:
		var opts []string
		if env.Subnet.IsValid() {
			opts = append(opts, "--bip="+env.Subnet.String())
		}
		opts = append(opts, fmt.Sprintf("--mtu=%d", env.MTU))
		if env.IPMasq {
			opts = append(opts, "--ip-masq=false")
		}
		if env.IPv6Subnet.IsValid() {
			opts = append(opts, "--ipv6", "--fixed-cidr-v6="+fixedCIDRv6(env))
		}
		if *envKey != "" {
			fmt.Fprintf(&b, "%s=\"%s\"\n", *envKey, strings.Join(opts, " "))
		} else {
			fmt.Fprintln(&b, strings.Join(opts, " "))
		}
	}
	if *out != "" {
		// Truncated and rewritten, as mk-docker-opts.sh does: systemd reads
		// an EnvironmentFile only when the next command starts.
		if err := os.WriteFile(*out, b.Bytes(), 0o644); err != nil {
			return err
		}
		return nil
	}
	_, err = stdout.Write(b.Bytes())
	return err
}

// writeFlannelOpts writes mk-docker-opts.sh's output: the DOCKER_OPT_*
// variables in the order its `set | grep` lists them (alphabetical, vtepd's
// IPv6 ones among them), then the combined one, each NAME="value"; the combined value starts with a space,
// as the script's does. One difference: the script puts an existing $KEY
// from its environment in front of the combined value; vtepd does not, as a
// unit whose environment file holds the last start's value would otherwise
// collect the options of every start.
func writeFlannelOpts(w io.Writer, env subnetfile.Env, key string, individual, combined, ipMasq bool) {
	type opt struct{ name, value string }
	var opts []opt
	if env.Subnet.IsValid() {
		opts = append(opts, opt{"DOCKER_OPT_BIP", "--bip=" + env.Subnet.String()})
	}
	if env.IPv6Subnet.IsValid() {
		opts = append(opts, opt{"DOCKER_OPT_FIXED_CIDR_V6", "--fixed-cidr-v6=" + fixedCIDRv6(env)})
	}
	if ipMasq {
		// vtepd masquerades: Docker must not; vtepd does not: Docker does.
		opts = append(opts, opt{"DOCKER_OPT_IPMASQ", fmt.Sprintf("--ip-masq=%t", !env.IPMasq)})
	}
	if env.IPv6Subnet.IsValid() {
		opts = append(opts, opt{"DOCKER_OPT_IPV6", "--ipv6"})
	}
	opts = append(opts, opt{"DOCKER_OPT_MTU", fmt.Sprintf("--mtu=%d", env.MTU)})
	var all strings.Builder
	for _, o := range opts {
		if individual {
			fmt.Fprintf(w, "%s=\"%s\"\n", o.name, o.value)
		}
		all.WriteString(" " + o.value)
	}
	if combined {
		fmt.Fprintf(w, "%s=\"%s\"\n", key, all.String())
	}
}

// fixedCIDRv6 is --fixed-cidr-v6: the host's IPv6 subnet as a network, the
// form dockerd documents (FLANNEL_IPV6_SUBNET holds the bridge's address,
// the subnet's first, which dockerd gives its bridge by itself).
func fixedCIDRv6(env subnetfile.Env) string { return env.IPv6Subnet.Masked().String() }

var shellName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
