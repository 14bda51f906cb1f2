package demo

import (
	"fmt"
	"strconv"
	"strings"
)

// sample is one line of the Prometheus text format: a metric name, its
// labels in the order written, and the value as written.
type sample struct {
	name   string
	labels [][2]string
	value  string
}

func (s sample) label(key string) string {
	for _, l := range s.labels {
		if l[0] == key {
			return l[1]
		}
	}
	return ""
}

// abridged prints s with only the labels keep names, in their order in s.
func (s sample) abridged(keep ...string) string {
	var parts []string
	for _, l := range s.labels {
		for _, k := range keep {
			if l[0] == k {
				parts = append(parts, k+"="+strconv.Quote(l[1]))
			}
		}
	}
	if len(parts) == 0 {
		return s.name + " " + s.value
	}
	return s.name + "{" + strings.Join(parts, ",") + "} " + s.value
}

// parseMetrics reads the samples of a Prometheus text exposition,
// skipping comments and blank lines.
func parseMetrics(body string) ([]sample, error) {
	var out []sample
	for i, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("/metrics line %d %q: %w", i+1, line, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func parseSample(line string) (sample, error) {
	var s sample
	end := strings.IndexAny(line, "{ ")
	if end <= 0 {
		return s, fmt.Errorf("no metric name")
	}
	s.name, line = line[:end], line[end:]
	if line[0] == '{' {
		line = line[1:]
		for !strings.HasPrefix(line, "}") {
			eq := strings.Index(line, `="`)
			if eq <= 0 {
				return s, fmt.Errorf("bad label")
			}
			key := line[:eq]
			line = line[eq+2:]
			// The value runs to the first unescaped quote.
			var v strings.Builder
			j := 0
			for ; j < len(line) && line[j] != '"'; j++ {
				if line[j] == '\\' && j+1 < len(line) {
					j++
					if line[j] == 'n' {
						v.WriteByte('\n')
						continue
					}
				}
				v.WriteByte(line[j])
			}
			if j == len(line) {
				return s, fmt.Errorf("unterminated label value")
			}
			s.labels = append(s.labels, [2]string{key, v.String()})
			line = strings.TrimPrefix(line[j+1:], ",")
		}
		line = line[1:]
	}
	f := strings.Fields(line)
	if len(f) == 0 {
		return s, fmt.Errorf("no value")
	}
	s.value = f[0]
	return s, nil
}

// find returns the samples named name whose labels include every pair of
// match.
func find(samples []sample, name string, match ...string) []sample {
	var out []sample
next:
	for _, s := range samples {
		if s.name != name {
			continue
		}
		for i := 0; i+1 < len(match); i += 2 {
			if s.label(match[i]) != match[i+1] {
				continue next
			}
		}
		out = append(out, s)
	}
	return out
}

// sum adds the values of the samples named name with match; ok is false
// if there is none or a value is not a number.
func sum(samples []sample, name string, match ...string) (total float64, ok bool) {
	found := find(samples, name, match...)
	for _, s := range found {
		v, err := strconv.ParseFloat(s.value, 64)
		if err != nil {
			return 0, false
		}
		total += v
	}
	return total, len(found) > 0
}
