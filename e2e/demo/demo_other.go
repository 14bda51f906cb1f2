//go:build !linux

package demo

import (
	"context"
	"errors"
	"io"
)

// Options configures Run.
type Options struct {
	Out      io.Writer
	Self     string
	Mesh     string
	Requests int
}

// Run needs Linux (BPF, cgroup v2, network namespaces).
func Run(context.Context, Options) error {
	return errors.New("the demo needs Linux with cgroup v2 and BPF")
}
