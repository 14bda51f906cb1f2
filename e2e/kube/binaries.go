package kube

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// ErrUnavailable is returned (wrapped) by Binaries when the binaries are not
// cached and cannot be built here: no go command, or the modules of the
// tools module cannot be downloaded (no module proxy).
var ErrUnavailable = errors.New("kubernetes binaries unavailable")

// Paths are the absolute paths of the control-plane binaries.
type Paths struct {
	APIServer         string
	ControllerManager string
	Etcd              string
}

// Versions are the releases the tools module pins.
type Versions struct {
	Kubernetes string // e.g. v1.36.3
	Etcd       string // e.g. v3.6.16
}

// The main packages built, and the names they are cached under.
var mainPackages = []struct{ pkg, name string }{
	{"k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"},
	{"k8s.io/kubernetes/cmd/kube-controller-manager", "kube-controller-manager"},
	{"go.etcd.io/etcd/server/v3", "etcd"},
}

func (p Paths) byName(name string) string {
	switch name {
	case "kube-apiserver":
		return p.APIServer
	case "kube-controller-manager":
		return p.ControllerManager
	case "etcd":
		return p.Etcd
	}
	panic("kube: unknown binary " + name)
}

func pathsIn(dir string) Paths {
	return Paths{
		APIServer:         filepath.Join(dir, "kube-apiserver"),
		ControllerManager: filepath.Join(dir, "kube-controller-manager"),
		Etcd:              filepath.Join(dir, "etcd"),
	}
}

// defaultCacheRoot is where binaries are cached when SLUICE_KUBE_CACHE is
// unset. It outlives test runs and `go clean -cache` on purpose: a cold build
// takes minutes.
const defaultCacheRoot = "/var/cache/sluice/kube"

// Binaries returns kube-apiserver, kube-controller-manager and etcd built
// from the tools module (e2e/kube/tools of the module containing the
// working directory), building them first if the cache lacks them.
//
// The cache directory is $SLUICE_KUBE_CACHE, or else /var/cache/sluice/kube
// (or the user cache directory when that cannot be created), with one
// subdirectory per set of versions and build inputs. A build runs at the
// lowest CPU priority into a temporary directory that is renamed into place
// when complete, under an exclusive lock on a file beside it, so concurrent
// callers (test binaries of several packages) wait for one build and never
// see a partial one. A cold build takes over ten minutes on two CPUs and
// 2.3 GB of memory; log says how long it took. Binaries returns an error wrapping ErrUnavailable
// when it would have to build but the go command or the module proxy cannot
// be reached.
func Binaries(ctx context.Context, log *slog.Logger) (Paths, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	toolsDir, err := findToolsDir()
	if err != nil {
		return Paths{}, err
	}
	vers, key, err := cacheKey(toolsDir)
	if err != nil {
		return Paths{}, err
	}
	root, err := cacheRoot()
	if err != nil {
		return Paths{}, err
	}
	dir := filepath.Join(root, key)
	if complete(dir) {
		return pathsIn(dir), nil
	}

	unlock, err := lockFile(ctx, filepath.Join(root, key+".lock"))
	if err != nil {
		return Paths{}, err
	}
	defer unlock()
	if complete(dir) { // another process built it while we waited
		return pathsIn(dir), nil
	}
	if err := build(ctx, log, toolsDir, vers, root, dir); err != nil {
		return Paths{}, err
	}
	return pathsIn(dir), nil
}

func complete(dir string) bool {
	for _, m := range mainPackages {
		info, err := os.Stat(filepath.Join(dir, m.name))
		if err != nil || !info.Mode().IsRegular() || info.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// findToolsDir finds e2e/kube/tools in the main module of the working
// directory, as the go command would. Test binaries run in their package's
// directory, so any package of the module finds it.
func findToolsDir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find tools module: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && modulePath(data) == "github.com/sluice-mesh/sluice" {
			tools := filepath.Join(dir, "e2e", "kube", "tools")
			if _, err := os.Stat(filepath.Join(tools, "go.mod")); err != nil {
				return "", fmt.Errorf("find tools module: %w", err)
			}
			return tools, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("find tools module: %s is not inside the sluice module", wd)
		}
	}
}

func modulePath(gomod []byte) string {
	for _, line := range strings.Split(string(gomod), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" {
			return f[1]
		}
	}
	return ""
}

// toolsVersions reads the versions the tools module requires.
func toolsVersions(gomod []byte) (Versions, error) {
	var v Versions
	for _, line := range strings.Split(string(gomod), "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require"))
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "k8s.io/kubernetes":
			v.Kubernetes = f[1]
		case "go.etcd.io/etcd/server/v3":
			v.Etcd = f[1]
		}
	}
	if v.Kubernetes == "" || v.Etcd == "" {
		return v, errors.New("tools go.mod requires no k8s.io/kubernetes or go.etcd.io/etcd/server/v3")
	}
	return v, nil
}

// cacheKey names the cache entry: the versions, for people, and a hash of
// everything else that shapes the binaries (the tools module's go.mod and
// go.sum, the build flags), so a change to any of them builds anew.
func cacheKey(toolsDir string) (Versions, string, error) {
	h := sha256.New()
	var vers Versions
	for _, name := range []string{"go.mod", "go.sum"} {
		data, err := os.ReadFile(filepath.Join(toolsDir, name))
		if err != nil {
			return vers, "", fmt.Errorf("read tools module: %w", err)
		}
		if name == "go.mod" {
			if vers, err = toolsVersions(data); err != nil {
				return vers, "", fmt.Errorf("%s: %w", filepath.Join(toolsDir, name), err)
			}
		}
		fmt.Fprintf(h, "%s %d\n", name, len(data))
		h.Write(data)
	}
	args, err := buildArgs(vers, "OUT")
	if err != nil {
		return vers, "", err
	}
	fmt.Fprintf(h, "%q\n", args)
	sum := hex.EncodeToString(h.Sum(nil))[:12]
	return vers, fmt.Sprintf("kubernetes-%s_etcd-%s_%s", vers.Kubernetes, vers.Etcd, sum), nil
}

// buildArgs are the go build arguments. The version variables are the ones
// Kubernetes' own release build sets; without them the binaries report
// v0.0.0-master and clients' version checks go astray.
func buildArgs(v Versions, out string) ([]string, error) {
	major, minor, ok := strings.Cut(strings.TrimPrefix(v.Kubernetes, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	if !ok || major == "" || minor == "" {
		return nil, fmt.Errorf("kubernetes version %q is not vMAJOR.MINOR.PATCH", v.Kubernetes)
	}
	var ld []string
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		ld = append(ld,
			"-X", pkg+".gitVersion="+v.Kubernetes,
			"-X", pkg+".gitMajor="+major,
			"-X", pkg+".gitMinor="+minor,
			"-X", pkg+".gitTreeState=clean")
	}
	// -s -w: no symbol table or DWARF, 30% smaller; panics still name
	// functions.
	args := []string{"build", "-trimpath", "-ldflags=-s -w " + strings.Join(ld, " "), "-o", out + string(filepath.Separator)}
	for _, m := range mainPackages {
		args = append(args, m.pkg)
	}
	return args, nil
}

func cacheRoot() (string, error) {
	if dir := os.Getenv("SLUICE_KUBE_CACHE"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", fmt.Errorf("kubernetes binary cache SLUICE_KUBE_CACHE: %w", err)
		}
		return dir, nil
	}
	if err := os.MkdirAll(defaultCacheRoot, 0o755); err == nil {
		return defaultCacheRoot, nil
	}
	user, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("kubernetes binary cache: %s is not writable and %w; set SLUICE_KUBE_CACHE", defaultCacheRoot, err)
	}
	dir := filepath.Join(user, "sluice", "kube")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("kubernetes binary cache: %w; set SLUICE_KUBE_CACHE", err)
	}
	return dir, nil
}

// lockFile takes an exclusive flock on path, waiting as long as ctx allows.
// The lock goes with the process, so a killed build leaves no stale lock.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock kubernetes binary cache: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for another build of the kubernetes binaries (lock %s): %w", path, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

func build(ctx context.Context, log *slog.Logger, toolsDir string, vers Versions, root, dir string) error {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("%w: build needs the go command: %v", ErrUnavailable, err)
	}
	// The tools module is built on its own, never as part of a workspace.
	env := append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly -buildvcs=false")
	// Download first, so a missing module proxy is told apart from a
	// failing build.
	download := exec.CommandContext(ctx, gobin, "mod", "download")
	download.Dir, download.Env = toolsDir, env
	if out, err := download.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: download the modules of %s: %v: %s", ErrUnavailable, toolsDir, err, lastLines(out, 10))
	}

	// Builds run only under the lock, so any earlier build directory is
	// what a killed build left behind.
	stale, _ := filepath.Glob(filepath.Join(root, ".build-*"))
	for _, d := range stale {
		os.RemoveAll(d)
	}
	tmp, err := os.MkdirTemp(root, ".build-")
	if err != nil {
		return fmt.Errorf("build kubernetes binaries: %w", err)
	}
	defer os.RemoveAll(tmp)
	args, err := buildArgs(vers, tmp)
	if err != nil {
		return err
	}
	// nice keeps a multi-minute build on every core from starving
	// whatever else runs on the machine.
	cmd := exec.CommandContext(ctx, gobin, args...)
	if nice, err := exec.LookPath("nice"); err == nil {
		cmd = exec.CommandContext(ctx, nice, append([]string{"-n", "19", gobin}, args...)...)
	}
	cmd.Dir = toolsDir
	// Static binaries, independent of the C toolchain and libc here.
	cmd.Env = append(env, "CGO_ENABLED=0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Stop the compilers too when ctx ends or the caller dies.
	cmd.SysProcAttr = sysProcAttr()
	cmd.Cancel = func() error {
		killGroup(cmd.Process.Pid)
		return nil
	}
	log.Info("building kubernetes binaries (cold go build cache: over ten minutes)",
		"kubernetes", vers.Kubernetes, "etcd", vers.Etcd, "cache", dir)
	start := time.Now()
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("build kubernetes binaries: stopped after %v: %w (compiled packages stay in the go build cache: a rerun with more time resumes)",
				time.Since(start).Round(time.Second), ctx.Err())
		}
		return fmt.Errorf("build kubernetes binaries in %s: %v: %s", toolsDir, err, lastLines(out.Bytes(), 20))
	}
	for _, m := range mainPackages {
		if built := execName(m.pkg); built != m.name {
			if err := os.Rename(filepath.Join(tmp, built), filepath.Join(tmp, m.name)); err != nil {
				return fmt.Errorf("build kubernetes binaries: %w", err)
			}
		}
	}
	if !complete(tmp) {
		names, _ := os.ReadDir(tmp)
		return fmt.Errorf("build kubernetes binaries: go build made %v, want %v", dirNames(names), mainPackages)
	}
	if err := checkVersions(ctx, pathsIn(tmp), vers); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("build kubernetes binaries: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("install kubernetes binaries into the cache: %w", err)
	}
	log.Info("built kubernetes binaries", "took", time.Since(start).Round(time.Second), "cache", dir)
	return nil
}

// checkVersions runs each binary's --version, so a binary that does not
// start, or reports another version than pinned, never enters the cache.
func checkVersions(ctx context.Context, p Paths, v Versions) error {
	want := map[string]string{
		"kube-apiserver":          "Kubernetes " + v.Kubernetes,
		"kube-controller-manager": "Kubernetes " + v.Kubernetes,
		"etcd":                    "etcd Version: " + strings.TrimPrefix(v.Etcd, "v"),
	}
	for _, m := range mainPackages {
		out, err := exec.CommandContext(ctx, p.byName(m.name), "--version").CombinedOutput()
		if err != nil {
			return fmt.Errorf("built %s does not run: %v: %s", m.name, err, lastLines(out, 5))
		}
		if !strings.Contains(string(out), want[m.name]) {
			return fmt.Errorf("built %s reports %q, want %q", m.name, strings.TrimSpace(string(out)), want[m.name])
		}
	}
	return nil
}

// execName is the file name go build gives the program of main package pkg:
// its last path element, or the one before a major-version suffix
// (go.etcd.io/etcd/server/v3 builds "server").
func execName(pkg string) string {
	elems := strings.Split(pkg, "/")
	last := elems[len(elems)-1]
	if len(elems) > 1 && len(last) > 1 && last[0] == 'v' && strings.Trim(last[1:], "0123456789") == "" {
		return elems[len(elems)-2]
	}
	return last
}

func dirNames(entries []os.DirEntry) []string {
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// lastLines returns the last n lines of out, where build and download
// errors are.
func lastLines(out []byte, n int) string {
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
