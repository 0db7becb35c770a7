package authz

import "strings"

// glob reports whether s matches pattern, where '*' matches any run of
// characters and '?' exactly one. It backtracks only to the last '*', so it
// runs in O(len(s)*len(pattern)) even on hostile patterns.
func glob(pattern, s string) bool {
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && (pattern[p] == '?' || pattern[p] == s[i]):
			p++
			i++
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case star >= 0:
			p = star + 1
			mark++
			i = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// arnLike compares the six colon-separated parts of two ARNs, each with
// wildcards; the resource part may itself contain colons.
func arnLike(pattern, s string) bool {
	pp := strings.SplitN(pattern, ":", 6)
	sp := strings.SplitN(s, ":", 6)
	if len(pp) != 6 || len(sp) != 6 {
		return false
	}
	for i := range pp {
		if !glob(pp[i], sp[i]) {
			return false
		}
	}
	return true
}

// matchAction matches case-insensitively; patterns are stored lower-case.
func matchAction(patterns []string, action string) bool {
	action = strings.ToLower(action)
	for _, p := range patterns {
		if glob(p, action) {
			return true
		}
	}
	return false
}

// matchResource matches case-sensitively, as AWS compares ARNs.
func matchResource(patterns []string, resource string) bool {
	for _, p := range patterns {
		if glob(p, resource) {
			return true
		}
	}
	return false
}
