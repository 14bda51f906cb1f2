package e2e_test

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The side-by-side benchmark also says what each phase cost, so that a
// set-up slower than no mesh can be told apart by where its time went: the
// CPU of the set-up's pods (their nodes' cgroups: the client and server
// processes, with the kernel work done on their behalf, BPF programs
// included), the Sluice agents' own CPU, and, with -sidebyside.bpf-stats,
// the run time of each of Sluice's BPF programs. Other work on the machine
// (a noisy neighbour, a build) is in none of them.

// sbCost is what one phase cost, measured around the client's run.
type sbCost struct {
	// CPU is the CPU time in seconds of the set-up's nodes' cgroups, which
	// hold its client and server pods.
	CPU float64
	// Agent is the CPU time in seconds the set-up's Sluice agents used.
	Agent float64 `json:",omitempty"`
	// BPF is the run count and time of the agents' BPF programs by name
	// (both nodes added up), with -sidebyside.bpf-stats.
	BPF map[string]sbProgCost `json:",omitempty"`
}

type sbProgCost struct{ Runs, NS uint64 }

// sbCostMark is the counters at one moment.
type sbCostMark struct {
	cpu   float64
	agent float64
	bpf   map[string]sbProgCost
}

// costMark reads the counters of a set-up: cgroups are its nodes' cgroups,
// pids its agents' processes (none for the other set-ups); withBPF reads
// the agents' programs' statistics.
func costMark(cgroups []string, pids []int, withBPF bool) (sbCostMark, error) {
	var m sbCostMark
	for _, cg := range cgroups {
		usec, err := cgroupUsage(cg)
		if err != nil {
			return m, err
		}
		m.cpu += float64(usec) / 1e6
	}
	for _, pid := range pids {
		ns, err := processRunTime(pid)
		if err != nil {
			return m, err
		}
		m.agent += float64(ns) / 1e9
		if !withBPF {
			continue
		}
		if m.bpf == nil {
			m.bpf = map[string]sbProgCost{}
		}
		if err := addProgramStats(pid, m.bpf); err != nil {
			return m, err
		}
	}
	return m, nil
}

// since is the cost from mark a to m.
func (m sbCostMark) since(a sbCostMark) *sbCost {
	c := &sbCost{CPU: m.cpu - a.cpu, Agent: m.agent - a.agent}
	for name, p := range m.bpf {
		was := a.bpf[name]
		if c.BPF == nil {
			c.BPF = map[string]sbProgCost{}
		}
		c.BPF[name] = sbProgCost{Runs: p.Runs - was.Runs, NS: p.NS - was.NS}
	}
	return c
}

// cgroupUsage is the CPU time in µs the tasks of cgroup v2 directory dir
// and its descendants have used (cpu.stat's usage_usec, kept whether or
// not the cpu controller is enabled).
func cgroupUsage(dir string) (uint64, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s/cpu.stat: %q: %v", dir, line, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("%s/cpu.stat: no usage_usec", dir)
}

// processRunTime is the nanoseconds every thread of process pid has run,
// from each thread's schedstat (finer than the tick-based utime/stime).
func processRunTime(pid int) (uint64, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("threads of agent %d: %w", pid, err)
	}
	total := uint64(0)
	for _, t := range tasks {
		data, err := os.ReadFile(filepath.Join(dir, t.Name(), "schedstat"))
		if errors.Is(err, os.ErrNotExist) {
			continue // the thread has exited
		}
		if err != nil {
			return 0, err
		}
		f := strings.Fields(string(data))
		if len(f) == 0 {
			return 0, fmt.Errorf("%s/%s/schedstat: empty", dir, t.Name())
		}
		ns, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s/%s/schedstat: %v", dir, t.Name(), err)
		}
		total += ns
	}
	return total, nil
}

// addProgramStats adds to into the run count and time of each BPF program
// process pid holds a descriptor of, by program name.
func addProgramStats(pid int, into map[string]sbProgCost) error {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("descriptors of agent %d: %w", pid, err)
	}
	seen := map[ebpf.ProgramID]bool{}
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join(dir, fd.Name())); err != nil || target != "anon_inode:bpf-prog" {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		var id ebpf.ProgramID
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "prog_id:"); ok {
				n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
				if err != nil {
					return fmt.Errorf("fdinfo of agent %d fd %s: %q: %v", pid, fd.Name(), line, err)
				}
				id = ebpf.ProgramID(n)
			}
		}
		if id == 0 || seen[id] {
			continue
		}
		seen[id] = true
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			return fmt.Errorf("program %d of agent %d: %w", id, pid, err)
		}
		pi, err := p.Info()
		var st *ebpf.ProgramStats
		if err == nil {
			st, err = p.Stats()
		}
		p.Close()
		if err != nil {
			return fmt.Errorf("program %d of agent %d: %w", id, pid, err)
		}
		c := into[pi.Name]
		c.Runs += st.RunCount
		c.NS += uint64(st.Runtime.Nanoseconds())
		into[pi.Name] = c
	}
	return nil
}

// enableBPFStats turns on the kernel's per-program run statistics until
// the returned closer is closed. They cost every program run two clock
// reads, so only profiling runs turn them on.
func enableBPFStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable BPF run statistics: %w", err)
	}
	return c, nil
}
