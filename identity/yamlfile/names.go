package yamlfile

import "strings"

// CheckLabel returns why s is not a DNS-1123 label (Kubernetes names and
// namespaces), or "".
func CheckLabel(s string) string {
	if len(s) > 63 || !IsLabel(s) {
		return "is not a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"
	}
	return ""
}

// CheckSubdomain returns why s is not a DNS-1123 subdomain (Kubernetes pod,
// service account and node names), or "". As in Kubernetes, only the whole
// name's length is limited, not each label's.
func CheckSubdomain(s string) string {
	if len(s) > 253 {
		return SubdomainReason
	}
	for _, l := range strings.Split(s, ".") {
		if !IsLabel(l) {
			return SubdomainReason
		}
	}
	return ""
}

// SubdomainReason is the reason CheckSubdomain gives.
const SubdomainReason = "is not a DNS-1123 subdomain: labels of lowercase letters, digits and '-' separated by '.', at most 253 characters"

// IsLabel reports whether s is lowercase letters, digits and '-', starting
// and ending with a letter or digit. It does not limit the length.
func IsLabel(s string) bool {
	if s == "" || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// CheckTrustDomain returns why s is not a SPIFFE trust domain name, or "".
func CheckTrustDomain(s string) string {
	if s == "" || len(s) > 255 {
		return "is not a SPIFFE trust domain: 1 to 255 characters"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return "is not a SPIFFE trust domain: lowercase letters, digits, '.', '-' and '_' only"
		}
	}
	return ""
}
