package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeSubnetFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "subnet.env")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

const subnetEnv = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.48.1/24\nFLANNEL_MTU=1450\n"

func TestDockerOpts(t *testing.T) {
	tests := []struct {
		name  string
		masq  string
		flags []string
		want  string
	}{
		{"vtepd does not masquerade: Docker keeps its default", "false", nil, "--bip=10.5.48.1/24 --mtu=1450\n"},
		{"vtepd masquerades: Docker must not", "true", nil, "--bip=10.5.48.1/24 --mtu=1450 --ip-masq=false\n"},
		{"environment file", "true", []string{"--env", "DOCKER_OPTS"}, "DOCKER_OPTS=\"--bip=10.5.48.1/24 --mtu=1450 --ip-masq=false\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			path := writeSubnetFile(t, subnetEnv+"FLANNEL_IPMASQ="+tt.masq+"\n")
			code, stdout, stderr := vtepd(t, append([]string{"docker-opts", "--subnet-file", path}, tt.flags...)...)
			if code != 0 || stdout != tt.want {
				t.Errorf("exit %d, stdout %q, want %q; stderr %s", code, stdout, tt.want, stderr)
			}
		})
	}
}

func TestDockerOptsJSON(t *testing.T) {
	clearEnv(t)
	for masq, want := range map[string]map[string]any{
		"true":  {"bip": "10.5.48.1/24", "mtu": 1450.0, "ip-masq": false},
		"false": {"bip": "10.5.48.1/24", "mtu": 1450.0},
	} {
		path := writeSubnetFile(t, subnetEnv+"FLANNEL_IPMASQ="+masq+"\n")
		code, stdout, stderr := vtepd(t, "docker-opts", "--json", "--subnet-file", path)
		var got map[string]any
		if err := json.Unmarshal([]byte(stdout), &got); code != 0 || err != nil {
			t.Fatalf("FLANNEL_IPMASQ=%s: exit %d, %v; stdout %q, stderr %s", masq, code, err, stdout, stderr)
		}
		if len(got) != len(want) {
			t.Errorf("FLANNEL_IPMASQ=%s: %v, want %v", masq, got, want)
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("FLANNEL_IPMASQ=%s: %s = %v, want %v", masq, k, got[k], v)
			}
		}
	}
}

func TestDockerOptsErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "absent.env")
	tests := []struct {
		name    string
		content string // "" for no file at all
		flags   []string
		code    int
		want    []string
	}{
		{"no subnet file", "", nil, 1, []string{missing, "start dockerd after vtepd"}},
		{"no subnet", "FLANNEL_MTU=1450\n", nil, 1, []string{"FLANNEL_SUBNET is missing", "FLANNEL_IPV6_SUBNET"}},
		{"no MTU, IPv6-only", "FLANNEL_IPV6_NETWORK=fd00:10::/48\nFLANNEL_IPV6_SUBNET=fd00:10:0:30::1/64\n", nil, 1, []string{"FLANNEL_MTU is missing"}},
		{"no MTU", "FLANNEL_SUBNET=10.5.48.1/24\n", nil, 1, []string{"FLANNEL_MTU is missing"}},
		{"bad MTU", "FLANNEL_SUBNET=10.5.48.1/24\nFLANNEL_MTU=big\n", nil, 1, []string{"FLANNEL_MTU", `"big"`}},
		{"json and env", subnetEnv, []string{"--json", "--env", "X"}, 2, []string{"--json excludes --env"}},
		{"json and flannel", subnetEnv, []string{"--json", "--flannel"}, 2, []string{"--json excludes", "--flannel"}},
		{"flannel's -i without --flannel", subnetEnv, []string{"--individual"}, 2, []string{"need --flannel"}},
		{"flannel's -m without --flannel", subnetEnv, []string{"--no-ip-masq"}, 2, []string{"need --flannel"}},
		{"output in a missing directory", subnetEnv, []string{"--out", "/nonexistent-vtepd-dir/docker.env"}, 1, []string{"/nonexistent-vtepd-dir/docker.env"}},
		{"bad env name", subnetEnv, []string{"--env", "DOCKER OPTS"}, 2, []string{"--env", `"DOCKER OPTS"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			path := missing
			if tt.content != "" {
				path = writeSubnetFile(t, tt.content)
			}
			code, stdout, stderr := vtepd(t, append([]string{"docker-opts", "--subnet-file", path}, tt.flags...)...)
			if code != tt.code || stdout != "" {
				t.Errorf("exit %d (want %d), stdout %q", code, tt.code, stdout)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not say %q:\n%s", w, stderr)
				}
			}
		})
	}
}

// TestDockerOptsFlannel: --flannel writes what flannel's mk-docker-opts.sh
// writes. The first case is the script's own test vector (flannel's
// dist/mk_docker_opts_test.go): same names, order, quoting and the leading
// space of the combined value.
func TestDockerOptsFlannel(t *testing.T) {
	const flannelVector = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"
	tests := []struct {
		name, content string
		flags         []string
		want          string
	}{
		{"flannel's test vector: both, vtepd not masquerading", flannelVector, nil,
			"DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n" +
				"DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"},
		{"vtepd masquerades: Docker must not", subnetEnv + "FLANNEL_IPMASQ=true\n", nil,
			"DOCKER_OPT_BIP=\"--bip=10.5.48.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\n" +
				"DOCKER_OPTS=\" --bip=10.5.48.1/24 --ip-masq=false --mtu=1450\"\n"},
		{"-i: the variables only", subnetEnv + "FLANNEL_IPMASQ=true\n", []string{"--individual"},
			"DOCKER_OPT_BIP=\"--bip=10.5.48.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\n"},
		{"-c -k: the combined one only, under another name", subnetEnv + "FLANNEL_IPMASQ=true\n", []string{"--combined", "--env", "DOCKER_NETWORK_OPTIONS"},
			"DOCKER_NETWORK_OPTIONS=\" --bip=10.5.48.1/24 --ip-masq=false --mtu=1450\"\n"},
		{"-i -c: both", subnetEnv + "FLANNEL_IPMASQ=false\n", []string{"--individual", "--combined"},
			"DOCKER_OPT_BIP=\"--bip=10.5.48.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\n" +
				"DOCKER_OPTS=\" --bip=10.5.48.1/24 --ip-masq=true --mtu=1450\"\n"},
		{"-m: no ip-masq option at all", subnetEnv + "FLANNEL_IPMASQ=true\n", []string{"--no-ip-masq"},
			"DOCKER_OPT_BIP=\"--bip=10.5.48.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPTS=\" --bip=10.5.48.1/24 --mtu=1450\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			path := writeSubnetFile(t, tt.content)
			code, stdout, stderr := vtepd(t, append([]string{"docker-opts", "--flannel", "--subnet-file", path}, tt.flags...)...)
			if code != 0 || stdout != tt.want {
				t.Errorf("exit %d, stdout\n%s\nwant\n%s\nstderr %s", code, stdout, tt.want, stderr)
			}
		})
	}
}

// TestDockerOptsOut: --out writes the file (replacing what was there, as
// mk-docker-opts.sh truncates it) and prints nothing, in every format.
func TestDockerOptsOut(t *testing.T) {
	clearEnv(t)
	path := writeSubnetFile(t, subnetEnv+"FLANNEL_IPMASQ=true\n")
	for _, tt := range []struct {
		flags []string
		want  string
	}{
		{nil, "--bip=10.5.48.1/24 --mtu=1450 --ip-masq=false\n"},
		{[]string{"--env", "DOCKER_OPTS"}, "DOCKER_OPTS=\"--bip=10.5.48.1/24 --mtu=1450 --ip-masq=false\"\n"},
		{[]string{"--flannel", "--combined"}, "DOCKER_OPTS=\" --bip=10.5.48.1/24 --ip-masq=false --mtu=1450\"\n"},
	} {
		out := filepath.Join(t.TempDir(), "docker.env")
		if err := os.WriteFile(out, []byte("OLD=\"a longer line that must not survive\"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		code, stdout, stderr := vtepd(t, append([]string{"docker-opts", "--subnet-file", path, "--out", out}, tt.flags...)...)
		if code != 0 || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %s", tt.flags, code, stdout, stderr)
		}
		got, err := os.ReadFile(out)
		if err != nil || string(got) != tt.want {
			t.Errorf("%v: the file holds %q (%v), want %q", tt.flags, got, err, tt.want)
		}
	}
}

// The subnet files of a dual-stack and an IPv6-only overlay, as vtepd (and
// flanneld) write them.
const (
	dualEnv = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.48.1/24\nFLANNEL_IPV6_NETWORK=fd00:10::/48\nFLANNEL_IPV6_SUBNET=fd00:10:0:30::1/64\nFLANNEL_MTU=1430\n"
	v6Env   = "FLANNEL_IPV6_NETWORK=fd00:10::/48\nFLANNEL_IPV6_SUBNET=fd00:10:0:30::1/64\nFLANNEL_MTU=1430\n"
)

// TestDockerOptsIPv6: an overlay with IPv6 gives dockerd --ipv6 and
// --fixed-cidr-v6 with the host's IPv6 subnet, in every form; an
// IPv6-only one has no --bip. In the --flannel form they are vtepd's own
// variables (mk-docker-opts.sh has no IPv6), in its alphabetical order.
func TestDockerOptsIPv6(t *testing.T) {
	tests := []struct {
		name, content string
		flags         []string
		want          string
	}{
		{"dual-stack", dualEnv + "FLANNEL_IPMASQ=true\n", nil,
			"--bip=10.5.48.1/24 --mtu=1430 --ip-masq=false --ipv6 --fixed-cidr-v6=fd00:10:0:30::/64\n"},
		{"IPv6-only", v6Env + "FLANNEL_IPMASQ=false\n", nil, "--mtu=1430 --ipv6 --fixed-cidr-v6=fd00:10:0:30::/64\n"},
		{"environment file", v6Env, []string{"--env", "DOCKER_OPTS"}, "DOCKER_OPTS=\"--mtu=1430 --ipv6 --fixed-cidr-v6=fd00:10:0:30::/64\"\n"},
		{"--flannel, dual-stack", dualEnv + "FLANNEL_IPMASQ=false\n", []string{"--flannel"},
			"DOCKER_OPT_BIP=\"--bip=10.5.48.1/24\"\nDOCKER_OPT_FIXED_CIDR_V6=\"--fixed-cidr-v6=fd00:10:0:30::/64\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n" +
				"DOCKER_OPT_IPV6=\"--ipv6\"\nDOCKER_OPT_MTU=\"--mtu=1430\"\n" +
				"DOCKER_OPTS=\" --bip=10.5.48.1/24 --fixed-cidr-v6=fd00:10:0:30::/64 --ip-masq=true --ipv6 --mtu=1430\"\n"},
		{"--flannel, IPv6-only, combined", v6Env + "FLANNEL_IPMASQ=true\n", []string{"--flannel", "--combined"},
			"DOCKER_OPTS=\" --fixed-cidr-v6=fd00:10:0:30::/64 --ip-masq=false --ipv6 --mtu=1430\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			path := writeSubnetFile(t, tt.content)
			code, stdout, stderr := vtepd(t, append([]string{"docker-opts", "--subnet-file", path}, tt.flags...)...)
			if code != 0 || stdout != tt.want {
				t.Errorf("exit %d, stdout\n%s\nwant\n%s\nstderr %s", code, stdout, tt.want, stderr)
			}
		})
	}
	t.Run("json", func(t *testing.T) {
		for content, want := range map[string]map[string]any{
			dualEnv: {"bip": "10.5.48.1/24", "mtu": 1430.0, "ipv6": true, "fixed-cidr-v6": "fd00:10:0:30::/64"},
			v6Env:   {"mtu": 1430.0, "ipv6": true, "fixed-cidr-v6": "fd00:10:0:30::/64"},
		} {
			clearEnv(t)
			path := writeSubnetFile(t, content)
			code, stdout, stderr := vtepd(t, "docker-opts", "--json", "--subnet-file", path)
			var got map[string]any
			if err := json.Unmarshal([]byte(stdout), &got); code != 0 || err != nil {
				t.Fatalf("exit %d, %v; stdout %q, stderr %s", code, err, stdout, stderr)
			}
			if len(got) != len(want) {
				t.Errorf("%v, want %v", got, want)
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s = %v, want %v", k, got[k], v)
				}
			}
		}
	})
	t.Run("help says what vtepd adds to mk-docker-opts.sh", func(t *testing.T) {
		clearEnv(t)
		_, _, stderr := vtepd(t, "docker-opts", "--help")
		for _, w := range []string{"DOCKER_OPT_IPV6", "DOCKER_OPT_FIXED_CIDR_V6", "does not have"} {
			if !strings.Contains(stderr, w) {
				t.Errorf("docker-opts --help does not say %q:\n%s", w, stderr)
			}
		}
	})
}
