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
		{"no subnet", "FLANNEL_MTU=1450\n", nil, 1, []string{"FLANNEL_SUBNET is missing"}},
		{"no MTU", "FLANNEL_SUBNET=10.5.48.1/24\n", nil, 1, []string{"FLANNEL_MTU is missing"}},
		{"bad MTU", "FLANNEL_SUBNET=10.5.48.1/24\nFLANNEL_MTU=big\n", nil, 1, []string{"FLANNEL_MTU", `"big"`}},
		{"json and env", subnetEnv, []string{"--json", "--env", "X"}, 2, []string{"--json and --env"}},
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
