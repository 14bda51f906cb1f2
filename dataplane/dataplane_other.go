//go:build !linux

package dataplane

import (
	"github.com/sluice-mesh/sluice/dataplane/model"

	"context"
	"errors"
	"log/slog"
	"net/netip"
)

// ErrNotSupported is returned off Linux: the dataplane needs Linux BPF.
var ErrNotSupported = errors.New("the Sluice dataplane needs Linux with BPF and cgroup v2")

// DefaultBPFFS is where bpffs is mounted when it is missing.
const DefaultBPFFS = "/sys/fs/bpf"

// Options configures Open.
type Options struct {
	PinDir   string
	Cgroup   string
	Capacity Capacity
	Logger   *slog.Logger
}

// Dataplane is unavailable off Linux.
type Dataplane struct{}

// Open fails with ErrNotSupported.
func Open(Options) (*Dataplane, error) { return nil, ErrNotSupported }

// Apply fails with ErrNotSupported.
func (*Dataplane) Apply(model.State) error { return ErrNotSupported }

// EntriesWritten returns 0.
func (*Dataplane) EntriesWritten() uint64 { return 0 }

// Status returns the zero Status.
func (*Dataplane) Status() Status { return Status{} }

// Close does nothing.
func (*Dataplane) Close() error { return nil }

// Teardown fails with ErrNotSupported.
func Teardown(string) error { return ErrNotSupported }

// Teardown fails with ErrNotSupported.
func (*Dataplane) Teardown() error { return ErrNotSupported }

// Uninstall fails with ErrNotSupported.
func Uninstall(string, string) (string, error) { return "", ErrNotSupported }

// CheckRemoved fails with ErrNotSupported.
func CheckRemoved(string, string) error { return ErrNotSupported }

// AttachedPrograms fails with ErrNotSupported.
func AttachedPrograms(string) ([]string, error) { return nil, ErrNotSupported }

// MountBPFFS fails with ErrNotSupported.
func MountBPFFS(string) (bool, error) { return false, ErrNotSupported }

// Cgroup2Mount fails with ErrNotSupported.
func Cgroup2Mount() (string, error) { return "", ErrNotSupported }

// CgroupID fails with ErrNotSupported.
func CgroupID(string) (uint64, error) { return 0, ErrNotSupported }

// NetnsInCgroup fails with ErrNotSupported.
func NetnsInCgroup(string) ([]string, error) { return nil, ErrNotSupported }

// Enforce fails with ErrNotSupported.
func (*Dataplane) Enforce(context.Context, func() []string, func(Event)) error {
	return ErrNotSupported
}

// RuleStats fails with ErrNotSupported.
func (*Dataplane) RuleStats() ([]RuleStat, error) { return nil, ErrNotSupported }

// Terminate fails with ErrNotSupported.
func (*Dataplane) Terminate(...string) (int, error) { return 0, ErrNotSupported }

// Stats is not supported on this system.
func (*Dataplane) Stats() (Stats, error) { return Stats{}, ErrNotSupported }

// SetFlows is not supported on this system.
func (*Dataplane) SetFlows(bool) error { return ErrNotSupported }

// FastPathSockets is not supported on this system.
func (*Dataplane) FastPathSockets() (int, error) { return 0, ErrNotSupported }

// L7Conns is unavailable off Linux.
type L7Conns struct{}

// OpenL7Conns fails with ErrNotSupported.
func OpenL7Conns(string) (*L7Conns, error) { return nil, ErrNotSupported }

// Close does nothing.
func (*L7Conns) Close() error { return nil }

// Take fails with ErrNotSupported.
func (*L7Conns) Take(netip.AddrPort) (L7Origin, error) { return L7Origin{}, ErrNotSupported }

// Speak fails with ErrNotSupported.
func (*L7Conns) Speak(int, uint32) error { return ErrNotSupported }
