package netns

// Docker hosts: a real dockerd (Debian's docker.io: dockerd, containerd,
// runc) per lab host, started the way the README tells an operator to:
// vtepd first, then dockerd with the options `vtepd docker-opts` derives
// from the subnet file. dockerd runs in the host's network namespace only
// (nsenter --net: `ip netns exec` would also give it a mount namespace with
// /sys remounted, hiding the cgroup mounts it needs), so its iptables rules,
// its docker0 bridge and its forwarding sysctl are the host's.
//
// Several dockerds side by side each get their own data root, exec root,
// socket, pid file, containerd namespaces and cgroup parent, all under
// /run/vtepd-lab/docker/<lab>/<host>. What dockerd makes outside them
// (/etc/docker/key.json, /run/docker, /run/containerd, /opt/containerd) is
// removed when the last lab dockerd of the process stops, if it was not
// there before; a crashed run's leftovers (shims, containers, mounts,
// cgroups, those files) are removed by the next run.

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DockerImage is the name of the lab's container image in every lab
// dockerd: no image can be pulled here, so each imports the one
// BuildDockerImage makes.
const DockerImage = "vtepd-lab/busybox"

const (
	// dockerBase holds every lab dockerd's roots, one folder per lab.
	dockerBase = "/run/vtepd-lab/docker"
	// cgroupParent is the cgroup folder (in every hierarchy) under which
	// each lab dockerd puts its containers.
	cgroupParent = "vtepd-lab"
	// machineRecord lists what lab dockerds made outside their roots and
	// is to be removed when the last one stops, or by the next run.
	machineRecord = dockerBase + "/created"
)

// machinePaths are what dockerd and containerd create outside the roots
// they are given: the daemon's key, the plugin and shim socket folders,
// and containerd's plugin folders.
var machinePaths = []string{"/etc/docker", "/etc/docker/key.json", "/run/docker", "/run/containerd", "/opt/containerd"}

// BuildDockerImage writes the lab's container image into dir as a root
// file system tar for `docker import`, and returns its path: Debian's
// busybox-static with a link for each applet, and the lab's whoami built
// without cgo, so that both run in a root holding nothing else.
func BuildDockerImage(dir string) (string, error) {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return "", fmt.Errorf("netns: the Docker image needs busybox (Debian package busybox-static): %w", err)
	}
	if err := checkStatic(busybox); err != nil {
		return "", err
	}
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return "", fmt.Errorf("netns: %s --list: %w", busybox, err)
	}
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("netns: go env GOMOD: %w", err)
	}
	whoami := filepath.Join(dir, "whoami-static")
	build := exec.Command("go", "build", "-o", whoami, "./test/netns/cmd/whoami")
	build.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("netns: go build whoami for the image: %v: %s", err, bytes.TrimSpace(out))
	}
	path := filepath.Join(dir, "vtepd-lab-image.tar")
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, d := range []struct {
		name string
		mode int64
	}{{"bin/", 0o755}, {"etc/", 0o755}, {"tmp/", 0o1777}, {"proc/", 0o555}, {"sys/", 0o555}, {"dev/", 0o755}} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d.name, Mode: d.mode}); err != nil {
			return "", err
		}
	}
	for name, src := range map[string]string{"bin/busybox": busybox, "bin/whoami": whoami} {
		b, err := os.ReadFile(src)
		if err != nil {
			return "", err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o755, Size: int64(len(b))}); err != nil {
			return "", err
		}
		if _, err := tw.Write(b); err != nil {
			return "", err
		}
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" || applet == "whoami" {
			continue // the lab's whoami, not busybox's
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777}); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	return path, f.Close()
}

// checkStatic fails for a dynamically linked program, which could not run
// in the image (Debian's plain busybox package is one).
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("netns: %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("netns: %s is dynamically linked; the Docker image needs Debian's busybox-static", path)
		}
	}
	return nil
}

// Docker runs a lab's dockerds. Close it before the lab: it stops every
// container and dockerd and removes what they made.
type Docker struct {
	lab   *Lab
	dir   string // dockerBase/<lab>
	image string
	// cli is the docker command line client.
	cli string

	mu      sync.Mutex
	engines []*Dockerd
	closed  bool
}

// NewDocker prepares lab for Docker hosts whose dockerds import image (from
// BuildDockerImage), after removing what a crashed run of the same lab
// left: dockerd, containerd and shim processes, containers, mounts and
// cgroups.
func NewDocker(lab *Lab, image string) (*Docker, error) {
	for _, tool := range []string{"dockerd", "containerd", "runc", "docker", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("netns: Docker hosts need %s (Debian packages docker.io, util-linux): %w", tool, err)
		}
	}
	cli, _ := exec.LookPath("docker")
	if err := acquireMachine(); err != nil {
		return nil, err
	}
	d := &Docker{lab: lab, dir: filepath.Join(dockerBase, lab.Name), image: image, cli: cli}
	if err := claimDir(d.dir); err != nil {
		releaseMachine()
		return nil, err
	}
	return d, nil
}

// Close removes every container, stops every dockerd (at once: each takes
// about a second) and removes all they made, then, if this was the last
// lab with Docker hosts in the process, what dockerd makes outside its
// roots. Safe to call more than once.
func (d *Docker) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	engines := d.engines
	d.mu.Unlock()
	errs := make([]error, len(engines))
	var wg sync.WaitGroup
	for i, e := range engines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = e.close()
		}()
	}
	wg.Wait()
	errs = append(errs, removeDockerDir(d.dir, d.lab.Name))
	errs = append(errs, releaseMachine())
	return errors.Join(errs...)
}

// Dockerd is a real dockerd on a lab host.
type Dockerd struct {
	Host *Host
	// Dir holds its data root, exec root, socket and pid file.
	Dir    string
	Socket string
	// Args are the options it was started with beyond the lab's own: those
	// vtepd gave, and any the test added.
	Args []string
	// Proc is the running dockerd.
	Proc *Process

	docker *Docker
	starts int

	mu         sync.Mutex
	containers []*DockerContainer
}

// Start starts dockerd on h with args (the options `vtepd docker-opts`
// gave, and any others, e.g. --live-restore), waits until its API answers
// and imports the lab's image. Start it after the host's vtepd is ready,
// as the README says.
func (d *Docker) Start(h *Host, args ...string) (*Dockerd, error) {
	e := &Dockerd{Host: h, Dir: filepath.Join(d.dir, h.Name), Args: args, docker: d}
	e.Socket = filepath.Join(e.Dir, "docker.sock")
	if err := os.MkdirAll(filepath.Join(e.Dir, "cli"), 0o700); err != nil {
		return nil, err
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, errors.New("netns: Docker closed")
	}
	d.engines = append(d.engines, e)
	d.mu.Unlock()
	if err := e.start(); err != nil {
		return nil, err
	}
	if _, err := e.CLI("import", d.image, DockerImage); err != nil {
		return nil, err
	}
	return e, nil
}

// start runs dockerd and waits for its API.
func (e *Dockerd) start() error {
	e.starts++
	name := e.Host.Name + ".dockerd"
	if e.starts > 1 {
		name = fmt.Sprintf("%s.dockerd.%d", e.Host.Name, e.starts)
	}
	id := "vtepd-lab-" + e.docker.lab.Name + "-" + e.Host.Name
	argv := []string{"nsenter", "--net=/run/netns/" + e.Host.NS, "dockerd",
		"--data-root", filepath.Join(e.Dir, "data"),
		"--exec-root", filepath.Join(e.Dir, "exec"),
		"-H", "unix://" + e.Socket,
		"--pidfile", filepath.Join(e.Dir, "docker.pid"),
		"--containerd-namespace", id,
		"--containerd-plugins-namespace", id + "-plugins",
		"--exec-opt", "native.cgroupdriver=cgroupfs",
		"--cgroup-parent", "/" + cgroupParent + "/" + e.docker.lab.Name + "-" + e.Host.Name,
	}
	p, err := startProcess(name, filepath.Join(e.docker.lab.Dir, name+".log"), append(argv, e.Args...))
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.Proc = p
	e.mu.Unlock()
	client := e.api()
	defer client.CloseIdleConnections()
	err = poll(30*time.Second, func() error {
		if done, err := p.Exited(); done {
			return fmt.Errorf("dockerd exited: %v", err)
		}
		resp, err := client.Get("http://docker/_ping")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/_ping: %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("netns: dockerd on %s: %w\n%s", e.Host.Name, err, p.Tail(20))
	}
	return nil
}

// api is an HTTP client for dockerd's socket.
func (e *Dockerd) api() *http.Client {
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", e.Socket)
		},
	}}
}

// CLI runs the docker client against this dockerd and returns its output.
func (e *Dockerd) CLI(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.docker.cli, append([]string{"-H", "unix://" + e.Socket}, args...)...)
	// The client's own files (config, contexts) stay in the lab.
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+filepath.Join(e.Dir, "cli"), "DOCKER_CLI_HINTS=false")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("netns: docker %s on %s: %v: %s", strings.Join(args, " "), e.Host.Name, err,
			bytes.TrimSpace(append(stdout.Bytes(), stderr.Bytes()...)))
	}
	return stdout.String(), nil
}

// Restart stops dockerd with SIGTERM, as `systemctl restart docker` does,
// and starts it again with the same options. Without --live-restore,
// dockerd stops the containers with it.
func (e *Dockerd) Restart() error {
	if err := e.Proc.Stop(20 * time.Second); err != nil {
		return fmt.Errorf("netns: stopping dockerd on %s: %w", e.Host.Name, err)
	}
	return e.start()
}

// Run starts a container (`docker run -d --init --name name IMAGE cmd...`)
// and returns it once running, with its network namespace named
// <host ns>-<name> for the lab's tools (ping, ip, Do).
func (e *Dockerd) Run(name string, cmd ...string) (*DockerContainer, error) {
	if _, err := e.CLI(append([]string{"run", "-d", "--init", "--name", name, DockerImage}, cmd...)...); err != nil {
		return nil, err
	}
	out, err := e.CLI("inspect", "-f", "{{.Id}} {{.State.Pid}} {{.NetworkSettings.IPAddress}}", name)
	if err != nil {
		return nil, err
	}
	f := strings.Fields(out)
	if len(f) != 3 {
		return nil, fmt.Errorf("netns: docker inspect %s on %s: %q", name, e.Host.Name, out)
	}
	pid, err := strconv.Atoi(f[1])
	if err != nil || pid <= 0 {
		return nil, fmt.Errorf("netns: container %s on %s is not running (pid %q)", name, e.Host.Name, f[1])
	}
	addr, err := netip.ParseAddr(f[2])
	if err != nil {
		return nil, fmt.Errorf("netns: container %s on %s has no address: %q", name, e.Host.Name, f[2])
	}
	c := &DockerContainer{
		Container: &Container{NS: e.Host.NS + "-" + name, Host: e.Host, Addr: addr},
		Name:      name, ID: f[0], Pid: pid, engine: e,
	}
	if err := e.docker.lab.run("ip", "netns", "attach", c.NS, f[1]); err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.containers = append(e.containers, c)
	e.mu.Unlock()
	return c, nil
}

// close removes the containers and stops dockerd.
func (e *Dockerd) close() error {
	e.mu.Lock()
	containers, p := e.containers, e.Proc
	e.containers = nil
	e.mu.Unlock()
	var errs []error
	var names []string
	for _, c := range containers {
		// The name holds the container's namespace open: let it go first.
		if err := e.docker.lab.run("ip", "netns", "del", c.NS); err != nil {
			errs = append(errs, err)
		}
		names = append(names, c.Name)
	}
	if p == nil {
		return errors.Join(errs...)
	}
	if done, _ := p.Exited(); !done && len(names) > 0 {
		if _, err := e.CLI(append([]string{"rm", "-f"}, names...)...); err != nil {
			errs = append(errs, err)
		}
	}
	// How a dockerd that a test killed or restarted ended is not news; one
	// that ignores SIGTERM is.
	if err := p.Stop(10 * time.Second); err != nil && strings.Contains(err.Error(), "did not stop") {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// DockerContainer is a container a lab dockerd runs. Its embedded
// Container is its network namespace, for the lab's tools run from the
// host's file system (iputils ping, which can set DF; ip); DockerExec runs
// a command inside the container itself.
type DockerContainer struct {
	*Container
	Name string
	ID   string
	// Pid is the container's first process (docker-init) as the host sees it.
	Pid int

	engine *Dockerd
}

// DockerExec runs `docker exec` in the container and returns its output.
func (c *DockerContainer) DockerExec(args ...string) (string, error) {
	return c.engine.CLI(append([]string{"exec", c.Name}, args...)...)
}

// DockerOptsFromDropIn does for h what systemd does with vtepd's
// docker.service drop-in (contrib/systemd/docker.service.d/vtepd.conf at
// dropIn): it runs the drop-in's ExecStartPre with the lab's vtepd and the
// host's subnet file (through VTEPD_SUBNET_FILE, as the drop-in relies on
// the default path), writing envFile in place of the drop-in's
// EnvironmentFile; reads envFile as systemd reads an EnvironmentFile; and
// returns the variable that the drop-in's ExecStart expands, split at
// whitespace as systemd splits an unquoted $VAR: dockerd's options.
func DockerOptsFromDropIn(dropIn string, h *Host, envFile string) ([]string, error) {
	b, err := os.ReadFile(dropIn)
	if err != nil {
		return nil, err
	}
	var pre, envPath, start string
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		switch {
		case !ok || strings.HasPrefix(k, "#"):
		case k == "ExecStartPre" && pre == "":
			pre = v
		case k == "EnvironmentFile":
			envPath = strings.TrimPrefix(v, "-")
		case k == "ExecStart" && v != "":
			start = v
		}
	}
	vars := regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`).FindAllStringSubmatch(start, -1)
	if pre == "" || envPath == "" || len(vars) != 1 {
		return nil, fmt.Errorf("netns: %s: want an ExecStartPre, an EnvironmentFile and an ExecStart with one $VARIABLE; found %q, %q, %q",
			dropIn, pre, envPath, start)
	}
	const installed = "/usr/local/bin/vtepd"
	if !strings.Contains(pre, installed) || !strings.Contains(pre, envPath) {
		return nil, fmt.Errorf("netns: %s: ExecStartPre %q does not run %s into %s", dropIn, pre, installed, envPath)
	}
	argv, err := splitUnitCommand(strings.NewReplacer(installed, h.lab.Bin.Vtepd, envPath, envFile).Replace(pre))
	if err != nil {
		return nil, fmt.Errorf("netns: %s: ExecStartPre: %w", dropIn, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	// The lab's vtepd may be a race-detector build: no second's wait at exit.
	cmd.Env = append(os.Environ(), "VTEPD_SUBNET_FILE="+h.SubnetFile, "GORACE=atexit_sleep_ms=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("netns: %s: ExecStartPre on %s: %v: %s", dropIn, h.Name, err, bytes.TrimSpace(out))
	}
	env, err := ReadEnvironmentFile(envFile)
	if err != nil {
		return nil, err
	}
	v, ok := env[vars[0][1]]
	if !ok {
		return nil, fmt.Errorf("netns: %s does not set %s, which the drop-in's ExecStart expands", envFile, vars[0][1])
	}
	return strings.Fields(v), nil
}

// splitUnitCommand splits a unit's command line into words as systemd
// does for the cases a drop-in uses: whitespace, and single or double
// quotes around a word.
func splitUnitCommand(s string) ([]string, error) {
	var words []string
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		if q := s[0]; q == '\'' || q == '"' {
			end := strings.IndexByte(s[1:], q)
			if end < 0 {
				return nil, fmt.Errorf("unterminated %c in %q", q, s)
			}
			words = append(words, s[1:1+end])
			s = s[2+end:]
			continue
		}
		end := strings.IndexAny(s, " \t")
		if end < 0 {
			end = len(s)
		}
		words = append(words, s[:end])
		s = s[end:]
	}
	if len(words) == 0 {
		return nil, errors.New("empty command")
	}
	return words, nil
}

// ReadEnvironmentFile reads a file of KEY=value lines as systemd's
// EnvironmentFile= does for the forms vtepd writes: a value in double
// quotes loses them (and \" \\ escapes inside), comments and blank lines
// are skipped.
func ReadEnvironmentFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("netns: %s:%d: not KEY=value: %q", path, i+1, line)
		}
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = strings.NewReplacer(`\"`, `"`, `\\`, `\`).Replace(v[1 : len(v)-1])
		} else if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
			v = v[1 : len(v)-1]
		}
		env[strings.TrimSpace(k)] = v
	}
	return env, nil
}

// RootFirewall returns the root namespace's packet filter: every iptables
// variant's rules, the nftables rule set and the forwarding sysctls, with
// counters taken out, for a test to check that a run left it unchanged.
func RootFirewall() string {
	var b strings.Builder
	for _, argv := range [][]string{
		{"iptables-save"}, {"ip6tables-save"}, {"iptables-legacy-save"}, {"ip6tables-legacy-save"}, {"nft", "list", "ruleset"},
	} {
		if _, err := exec.LookPath(argv[0]); err != nil {
			continue
		}
		// A listing that fails (a missing module) is recorded as such: a
		// change in it is a change all the same.
		out, err := exec.Command(argv[0], argv[1:]...).Output()
		fmt.Fprintf(&b, "== %s (%v)\n", strings.Join(argv, " "), err)
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "#") {
				continue // iptables-save's dated header and footer
			}
			line = chainCounters.ReplaceAllString(line, "")
			b.WriteString(nftCounters.ReplaceAllString(line, "counter") + "\n")
		}
	}
	for _, s := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding", "/proc/sys/net/bridge/bridge-nf-call-iptables"} {
		if v, err := os.ReadFile(s); err == nil {
			fmt.Fprintf(&b, "%s=%s", s, v)
		}
	}
	return b.String()
}

var (
	chainCounters = regexp.MustCompile(`\[\d+:\d+\]`)
	nftCounters   = regexp.MustCompile(`counter packets \d+ bytes \d+`)
)
