package netns

// Cleaning up after lab dockerds: what they leave in and outside their
// roots, at Close and after a crash.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Process-wide state of the lab's dockerds: how many labs use Docker now.
// The first to start records which of machinePaths exist; the last to stop
// removes those that did not.
var dockerMachine struct {
	sync.Mutex
	users int
}

func acquireMachine() error {
	dockerMachine.Lock()
	defer dockerMachine.Unlock()
	if dockerMachine.users > 0 {
		dockerMachine.users++
		return nil
	}
	if err := os.MkdirAll(dockerBase, 0o755); err != nil {
		return err
	}
	// Before this process's first dockerd, whatever is there belongs to
	// runs that ended without cleaning up, unless its owner still runs
	// (which the lab lock should prevent): its processes, containers,
	// mounts and cgroups go.
	entries, err := os.ReadDir(dockerBase)
	if err != nil {
		return err
	}
	for _, ent := range entries {
		if pid, alive := dirOwner(filepath.Join(dockerBase, ent.Name())); alive && pid != os.Getpid() {
			return fmt.Errorf("netns: %s belongs to process %d, which still runs a lab", filepath.Join(dockerBase, ent.Name()), pid)
		}
	}
	killNaming(dockerBase + "/")
	for _, ent := range entries {
		if ent.IsDir() {
			if err := removeDockerDir(filepath.Join(dockerBase, ent.Name()), ent.Name()); err != nil {
				return err
			}
		}
	}
	if err := poll(10*time.Second, func() error { return removeCgroups(cgroupDirs(cgroupParent + "/*")) }); err != nil {
		return fmt.Errorf("netns: removing lab containers' cgroups: %w", err)
	}
	if err := removeRecorded(); err != nil {
		return err
	}
	var absent []string
	for _, p := range machinePaths {
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			absent = append(absent, p)
		}
	}
	if err := os.WriteFile(machineRecord, []byte(strings.Join(absent, "\n")), 0o644); err != nil {
		return err
	}
	dockerMachine.users = 1
	return nil
}

func releaseMachine() error {
	dockerMachine.Lock()
	defer dockerMachine.Unlock()
	if dockerMachine.users--; dockerMachine.users > 0 {
		return nil
	}
	err := removeRecorded()
	for _, top := range cgroupDirs(cgroupParent) {
		os.Remove(top) // if no other lab's containers are in it
	}
	os.Remove(dockerBase) // if empty
	return err
}

// removeRecorded removes what the record says lab dockerds created.
func removeRecorded() error {
	b, err := os.ReadFile(machineRecord)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range strings.Fields(string(b)) {
		if !slices.Contains(machinePaths, p) {
			errs = append(errs, fmt.Errorf("netns: %s names %q, not a path lab dockerds make", machineRecord, p))
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		errs = append(errs, os.Remove(machineRecord))
	}
	return errors.Join(errs...)
}

// claimDir makes a lab's Docker folder this process's, after clearing what
// a crashed run of the same lab left in it.
func claimDir(dir string) error {
	// Its owner may be this process only if an earlier Close failed: the
	// lab's namespaces make one lab name one lab at a time.
	if pid, alive := dirOwner(dir); alive && pid != os.Getpid() {
		return fmt.Errorf("netns: %s is in use by process %d", dir, pid)
	}
	if err := removeDockerDir(dir, filepath.Base(dir)); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "owner"), []byte(processID(os.Getpid())), 0o644)
}

// processID names a process by its PID and start time, so that a PID
// reused by another program is not taken for the owner.
func processID(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// The command name in parentheses may hold spaces: count from after it.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 20 {
		return ""
	}
	return fmt.Sprintf("%d %s", pid, f[19]) // field 22: start time
}

// dirOwner reads the owner of a lab's Docker folder and says whether it
// still runs.
func dirOwner(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "owner"))
	if err != nil {
		return 0, false
	}
	pid, _ := strconv.Atoi(strings.Fields(string(b) + " 0")[0])
	return pid, pid > 0 && processID(pid) == strings.TrimSpace(string(b))
}

// removeDockerDir removes a lab's Docker folder and everything its
// dockerds made: processes naming the folder (dockerd, containerd,
// shims), the containers (by their cgroups), mounts under it, its cgroups.
func removeDockerDir(dir, lab string) error {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	killNaming(dir + "/")
	cgroups := cgroupDirs(cgroupParent + "/" + lab + "-*")
	var errs []error
	if err := poll(10*time.Second, func() error { return removeCgroups(cgroups) }); err != nil {
		errs = append(errs, fmt.Errorf("netns: removing the containers' cgroups: %w", err))
	}
	if err := unmountUnder(dir); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("netns: %w", err))
	}
	return errors.Join(errs...)
}

// killNaming kills every process whose command line mentions path, and
// waits for them to go.
func killNaming(path string) {
	find := func() []int {
		var pids []int
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, f := range procs {
			b, err := os.ReadFile(f)
			if err != nil || !bytes.Contains(b, []byte(path)) {
				continue
			}
			if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f))); err == nil && pid != os.Getpid() {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	poll(5*time.Second, func() error {
		pids := find()
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if len(pids) > 0 {
			return errors.New("still running")
		}
		return nil
	})
}

// cgroupDirs returns the folders matching pattern (relative to a
// hierarchy's root) in every cgroup hierarchy: the cgroup v1 controllers
// and the v2 one, in hybrid and unified layouts alike.
func cgroupDirs(pattern string) []string {
	var out []string
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/*"} {
		m, _ := filepath.Glob(filepath.Join(root, pattern))
		out = append(out, m...)
	}
	return out
}

// removeCgroups kills the processes in the cgroups under dirs and removes
// them, deepest first; it fails while any is left.
func removeCgroups(dirs []string) error {
	var all []string
	for _, top := range dirs {
		filepath.WalkDir(top, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				all = append(all, path)
			}
			return nil
		})
	}
	sort.Slice(all, func(i, j int) bool { return len(all[i]) > len(all[j]) })
	var left []string
	for _, dir := range all {
		if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
			for _, s := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(s); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			left = append(left, dir)
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("%d left, e.g. %s", len(left), left[0])
	}
	return nil
}

// unmountUnder detaches every mount at or below dir (overlay roots, the
// containers' namespace files, dockerd's private bind of its root),
// deepest first.
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, mp := range points {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("netns: umount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
