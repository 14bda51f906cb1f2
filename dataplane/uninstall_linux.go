package dataplane

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// removalWait bounds how long CheckRemoved waits for the kernel: a link
// whose last reference was a pin is released in the background after the
// pin is removed.
const removalWait = 5 * time.Second

// Uninstall removes the dataplane pinned under pinDir, as Teardown does, and
// then checks with CheckRemoved that it is gone. cgroup is the cgroup the
// check looks at; "" means the one the pinned links are attached to (the
// cgroup2 root when nothing is pinned). A cgroup given that is not the one
// the links are attached to is refused before anything is removed, since
// checking it would prove nothing. Uninstall returns the cgroup it checked.
func Uninstall(pinDir, cgroup string) (checked string, err error) {
	cgroup, err = uninstallCgroup(pinDir, cgroup)
	if err != nil {
		return "", err
	}
	if err := Teardown(pinDir); err != nil {
		return cgroup, err
	}
	return cgroup, CheckRemoved(pinDir, cgroup)
}

// uninstallCgroup returns the cgroup Uninstall checks: cgroup if given
// (after checking it against the pinned links), else the cgroup of the
// links pinned under pinDir, else the cgroup2 root.
func uninstallCgroup(pinDir, cgroup string) (string, error) {
	ids, err := pinnedCgroups(pinDir)
	if err != nil {
		return "", err
	}
	mount, err := Cgroup2Mount()
	if err != nil {
		return "", err
	}
	if cgroup == "" {
		switch len(ids) {
		case 0:
			return mount, nil
		case 1:
			for id := range ids {
				return cgroupByID(mount, id)
			}
		}
		return "", fmt.Errorf("the links pinned in %s are attached to %d different cgroups; give the one to check", pinDir, len(ids))
	}
	want, err := cgroupID(cgroup)
	if err != nil {
		return "", err
	}
	for id, pin := range ids {
		if id != want {
			where := fmt.Sprintf("cgroup id %d", id)
			if path, err := cgroupByID(mount, id); err == nil {
				where = path
			}
			return "", fmt.Errorf("%s is attached to %s, not to %s; give that cgroup, or none to have it found", pin, where, cgroup)
		}
	}
	return cgroup, nil
}

// pinnedCgroups returns the ids of the cgroups the links pinned under
// pinDir are attached to, each with one pin that shows it.
func pinnedCgroups(pinDir string) (map[uint64]string, error) {
	entries, err := os.ReadDir(pinDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pin directory: %w", err)
	}
	ids := map[uint64]string{}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), linkPinPrefix) {
			continue
		}
		pin := filepath.Join(pinDir, e.Name())
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			return nil, fmt.Errorf("load pinned link %s: %w", pin, err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			return nil, fmt.Errorf("pinned link %s: %w", pin, err)
		}
		if cg := info.Cgroup(); cg != nil {
			ids[cg.CgroupId] = pin
		}
	}
	return ids, nil
}

// cgroupByID finds the cgroup2 directory under mount whose id is id.
func cgroupByID(mount string, id uint64) (string, error) {
	found := ""
	err := filepath.WalkDir(mount, func(dir string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && dir != mount {
				return nil // removed meanwhile
			}
			return err
		}
		if !e.IsDir() {
			return nil
		}
		var st unix.Stat_t
		if unix.Stat(dir, &st) == nil && st.Ino == id {
			found = dir
			return filepath.SkipAll
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("look for cgroup id %d under %s: %w", id, mount, err)
	}
	if found == "" {
		return "", fmt.Errorf("no cgroup with id %d under %s (removed?)", id, mount)
	}
	return found, nil
}

// CheckRemoved checks that a dataplane is gone: pinDir does not exist and
// no Sluice program is attached to cgroup. It waits a few seconds for the
// kernel to release what was unpinned, then returns an ErrNotRemoved error
// naming what is left.
func CheckRemoved(pinDir, cgroup string) error {
	deadline := time.Now().Add(removalWait)
	for {
		var left []string
		if _, err := os.Lstat(pinDir); err == nil {
			entries, _ := os.ReadDir(pinDir)
			names := make([]string, len(entries))
			for i, e := range entries {
				names[i] = e.Name()
			}
			left = append(left, fmt.Sprintf("pin directory %s still exists (holding: %s)", pinDir, strings.Join(names, ", ")))
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("check pin directory: %w", err)
		}
		progs, err := AttachedPrograms(cgroup)
		if err != nil {
			return err
		}
		for _, p := range progs {
			left = append(left, p+" still attached to "+cgroup)
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s", ErrNotRemoved, strings.Join(left, "; "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// AttachedPrograms describes the Sluice programs (their names start with
// "sl_") attached directly to cgroup, at any of the hooks Sluice uses, e.g.
// "program sl_connect4 (id 42) at connect4". It does not look at the
// cgroup's ancestors or descendants.
func AttachedPrograms(cgroup string) ([]string, error) {
	f, err := os.Open(cgroup)
	if err != nil {
		return nil, fmt.Errorf("open cgroup: %w", err)
	}
	defer f.Close()
	var out []string
	for _, a := range attachments {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: a.at})
		if err != nil {
			return nil, fmt.Errorf("query the programs attached to %s at %s: %w", cgroup, a.name, err)
		}
		for _, p := range res.Programs {
			prog, err := ebpf.NewProgramFromID(p.ID)
			if errors.Is(err, fs.ErrNotExist) {
				continue // detached and freed meanwhile
			}
			if err != nil {
				return nil, fmt.Errorf("program %d attached to %s: %w", p.ID, cgroup, err)
			}
			info, err := prog.Info()
			prog.Close()
			if err != nil {
				return nil, fmt.Errorf("program %d attached to %s: %w", p.ID, cgroup, err)
			}
			if strings.HasPrefix(info.Name, "sl_") {
				out = append(out, fmt.Sprintf("program %s (id %d) at %s", info.Name, p.ID, a.name))
			}
		}
	}
	return out, nil
}
