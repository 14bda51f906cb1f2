package main

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/sluice-mesh/sluice/identity/yamlfile"
)

// The agent takes each setting from, in this order, its command line, the
// environment, its settings file, and the flag's default. A setting is
// named after its long flag: the file's key is the flag name, the
// environment variable is envPrefix and the flag name upper-cased with
// dashes as underscores (--node-name: node-name, SLUICE_NODE_NAME).

// envPrefix starts the name of every environment variable the agent reads.
// Variables with the prefix that name no flag are ignored: tests set
// SLUICE_TEST_*, and Kubernetes sets SLUICE_SERVICE_HOST and the like in
// pods when a Service is named sluice.
const envPrefix = "SLUICE_"

// configFlag is the flag that names the settings file.
const configFlag = "config"

// errSettingsFile classes the problems found in a settings file.
var errSettingsFile = errors.New("invalid agent settings file")

// envName returns the environment variable that sets flag.
func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// settingsOrigin records which settings were not given on the command line
// but taken from the environment or the settings file.
type settingsOrigin struct {
	file     string   // the settings file; "" if none
	fromEnv  []string // flag names, sorted
	fromFile []string
}

// log logs, in one line, the settings taken from the environment or the
// file; nothing if there are none.
func (o settingsOrigin) log(log *slog.Logger) {
	if len(o.fromEnv) == 0 && len(o.fromFile) == 0 {
		return
	}
	log.Info("settings from the environment and the settings file", "file", o.file,
		"from_env", strings.Join(o.fromEnv, ","), "from_file", strings.Join(o.fromFile, ","))
}

// applySettings sets each flag of fs that the command line did not set
// from the environment (lookup) or, failing that, from the settings file:
// the value of flag --config, else of SLUICE_CONFIG, read with readFile.
// The flags parse the values themselves, so a value means the same
// wherever it comes from; an error names its source. The file is checked
// whole (keys, value kinds) before any value is taken from it.
func applySettings(fs *pflag.FlagSet, lookup func(string) (string, bool), readFile func(string) ([]byte, error)) (settingsOrigin, error) {
	var origin settingsOrigin
	cfg := fs.Lookup(configFlag)
	if cfg == nil {
		return origin, fmt.Errorf("flag --%s is not defined", configFlag)
	}
	path, source := cfg.Value.String(), "--"+configFlag
	if !cfg.Changed {
		if v, ok := lookup(envName(configFlag)); ok {
			path, source = v, envName(configFlag)
		}
	}
	var file map[string]*yaml.Node
	if path != "" {
		data, err := readFile(path)
		if err != nil {
			return origin, fmt.Errorf("%s: %w", source, err)
		}
		if file, err = parseSettings(fs, path, data); err != nil {
			return origin, err
		}
		origin.file = path
	}
	var errs []error
	fs.VisitAll(func(fl *pflag.Flag) {
		if fl.Changed || !isSetting(fl.Name) || len(errs) > 0 {
			return
		}
		env := envName(fl.Name)
		if v, ok := lookup(env); ok {
			if err := setFlag(fs, fl, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
				return
			}
			origin.fromEnv = append(origin.fromEnv, fl.Name)
			return
		}
		if n := file[fl.Name]; n != nil {
			if err := setFlag(fs, fl, n.Value); err != nil {
				errs = append(errs, &yamlfile.Error{File: path, Line: n.Line, Field: fl.Name,
					Reason: fmt.Sprintf("%q: %v", n.Value, err), Class: errSettingsFile})
				return
			}
			origin.fromFile = append(origin.fromFile, fl.Name)
		}
	})
	return origin, errors.Join(errs...)
}

// isSetting reports whether flag can be set from the environment or the
// settings file: every flag but --config and --help.
func isSetting(flag string) bool { return flag != configFlag && flag != "help" }

// setFlag sets fl through fs, as the command line would, and returns why
// the value is refused in terms of the flag's type.
func setFlag(fs *pflag.FlagSet, fl *pflag.Flag, value string) error {
	err := fs.Set(fl.Name, value)
	if err == nil {
		return nil
	}
	var invalid *pflag.InvalidValueError
	if errors.As(err, &invalid) {
		err = invalid.Unwrap()
	}
	return fmt.Errorf("invalid %s for --%s: %w", fl.Value.Type(), fl.Name, err)
}

// parseSettings checks a settings file and returns its values by flag
// name. The file is a mapping of flag names to single values; a null value
// counts as absent.
func parseSettings(fs *pflag.FlagSet, path string, data []byte) (map[string]*yaml.Node, error) {
	f := &yamlfile.File{Name: path, Kind: "settings file", Class: errSettingsFile}
	root, err := f.Decode(data)
	if err != nil || root == nil {
		return nil, err
	}
	if root.Kind != yaml.MappingNode {
		return nil, f.Errorf(root, "", "must be a mapping of flag names to values (e.g. node-name: n1), not %s", yamlfile.Describe(root))
	}
	vals := map[string]*yaml.Node{}
	seen := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := yamlfile.Resolve(root.Content[i]), yamlfile.Resolve(root.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			return nil, f.Errorf(k, "", "keys must be flag names, not %s", yamlfile.Describe(k))
		}
		key := k.Value
		switch fl := fs.Lookup(key); {
		case k.Tag == "!!merge":
			return nil, f.Errorf(k, key, "merge keys (<<) are not supported; repeat the settings")
		case key == configFlag:
			return nil, f.Errorf(k, key, "a settings file cannot name another settings file")
		case fl == nil || !isSetting(key):
			if near := suggest(fs, key); near != "" {
				return nil, f.Errorf(k, key, "unknown setting; did you mean %s?", near)
			}
			return nil, f.Errorf(k, key, "unknown setting; keys are the agent's long flag names (sluice agent --help)")
		case seen[key]:
			return nil, f.Errorf(k, key, "given twice")
		case v.Kind != yaml.ScalarNode:
			return nil, f.Errorf(v, key, "must be a single value, not %s", yamlfile.Describe(v))
		}
		seen[key] = true
		if !yamlfile.IsNull(v) {
			vals[key] = v
		}
	}
	return vals, nil
}

// suggest returns the setting closest to key, if one is close enough to
// be a likely typo or another spelling of it; "" otherwise.
func suggest(fs *pflag.FlagSet, key string) string {
	norm := strings.ToLower(strings.ReplaceAll(key, "_", "-"))
	norm = strings.TrimPrefix(norm, strings.ToLower(strings.ReplaceAll(envPrefix, "_", "-")))
	norm = strings.TrimLeft(norm, "-")
	best, bestDist := "", 0
	fs.VisitAll(func(fl *pflag.Flag) {
		if !isSetting(fl.Name) {
			return
		}
		if d := editDistance(norm, fl.Name); best == "" || d < bestDist {
			best, bestDist = fl.Name, d
		}
	})
	if bestDist > max(2, len(best)/4) {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = slices.Min([]int{prev[j] + 1, cur[j-1] + 1, prev[j-1] + cost})
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
