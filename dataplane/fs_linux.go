package dataplane

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Cgroup2Mount returns where this host mounts the cgroup2 filesystem, read
// from /proc/self/mountinfo.
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	return ParseCgroup2Mount(f)
}

// CgroupID returns the id of a cgroup2 directory: what the kernel reports
// as a process's cgroup id, and the key of a workload's identity.
func CgroupID(path string) (uint64, error) { return cgroupID(path) }

// cgroupID returns the id of a cgroup2 directory, as the kernel reports it in
// link info (the directory's inode number).
func cgroupID(path string) (uint64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		hint := ""
		if m, err := Cgroup2Mount(); err == nil {
			hint = " (cgroup2 is mounted at " + m + ")"
		}
		return 0, fmt.Errorf("cgroup %s is not on a cgroup2 filesystem%s", path, hint)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}

// DefaultBPFFS is where bpffs is mounted when it is missing.
const DefaultBPFFS = "/sys/fs/bpf"

// EnsureBPFFS checks that dir is (or will be created) on a bpffs, mounting
// bpffs at DefaultBPFFS when dir lies under it and nothing is mounted there.
func EnsureBPFFS(dir string) error {
	_, err := MountBPFFS(dir)
	return err
}

// MountBPFFS is EnsureBPFFS that also reports whether it mounted bpffs.
func MountBPFFS(dir string) (mounted bool, err error) {
	dir = filepath.Clean(dir)
	existing := dir
	for {
		if _, err := os.Stat(existing); err == nil {
			break
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	if isBPFFS(existing) {
		return false, nil
	}
	under := dir == DefaultBPFFS || strings.HasPrefix(dir, DefaultBPFFS+"/")
	if !under || isBPFFS(DefaultBPFFS) {
		return false, fmt.Errorf("pin directory %s is not on a bpffs; mount one (mount -t bpf bpf <dir>) or use a directory under %s", dir, DefaultBPFFS)
	}
	if err := os.MkdirAll(DefaultBPFFS, 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", DefaultBPFFS, err)
	}
	if err := unix.Mount("bpf", DefaultBPFFS, "bpf", 0, "mode=0700"); err != nil {
		return false, fmt.Errorf("mount bpffs at %s: %w", DefaultBPFFS, err)
	}
	return true, nil
}

func isBPFFS(path string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(path, &fs) == nil && fs.Type == unix.BPF_FS_MAGIC
}

// lockDir takes an exclusive, non-blocking flock on dir for the life of the
// returned file.
func lockDir(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open pin directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is held by another sluice process", ErrLocked, dir)
		}
		return nil, fmt.Errorf("lock pin directory %s: %w", dir, err)
	}
	return f, nil
}

func dirEmpty(dir string) (bool, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	return len(entries) == 0, nil
}

// removePins unpins every Sluice object (maps sl_*, links link_*) in dir.
func removePins(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, "sl_") || strings.HasPrefix(n, linkPinPrefix) {
			if err := os.Remove(filepath.Join(dir, n)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func removeDir(dir string) error {
	err := os.Remove(dir)
	if err == nil || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	left, _ := os.ReadDir(dir)
	names := make([]string, len(left))
	for i, e := range left {
		names[i] = e.Name()
	}
	return fmt.Errorf("remove pin directory %s (holds objects Sluice did not create: %s): %w", dir, strings.Join(names, ", "), err)
}

// NetnsInCgroup returns one path (/proc/<pid>/ns/net) for each network
// namespace that a process of the cgroup subtree at root runs in: where
// Terminate must look for the subtree's connections. Processes that exit
// while it looks are skipped.
func NetnsInCgroup(root string) ([]string, error) {
	type nsID struct{ dev, ino uint64 }
	seen := map[nsID]bool{}
	var out []string
	err := filepath.WalkDir(root, func(dir string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && dir != root {
				return nil // a cgroup removed meanwhile
			}
			return err
		}
		if !e.IsDir() {
			return nil
		}
		procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		for _, pid := range strings.Fields(string(procs)) {
			path := "/proc/" + pid + "/ns/net"
			var st unix.Stat_t
			if unix.Stat(path, &st) != nil {
				continue // exited
			}
			id := nsID{st.Dev, st.Ino}
			if !seen[id] {
				seen[id] = true
				out = append(out, path)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("network namespaces of cgroup %s: %w", root, err)
	}
	return out, nil
}
