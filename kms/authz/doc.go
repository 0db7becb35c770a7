// Package authz decides whether a KMS request is authorized, the way AWS
// does: it parses key policies and identity policies (the IAM policy
// grammar, restricted to what KMS needs), evaluates them against a request,
// and combines the key policy, the caller's identity policies and grants
// with KMS's rules, including the delegation to the key's account (the
// "Enable IAM User Permissions" statement) and the both-sides rule for
// callers from another account.
//
// It exists so the decision is made by pure, table-testable code that knows
// nothing of HTTP, storage or the HSM: callers gather the request, the
// policies and any matching grant, and get back a Decision and the
// AccessDeniedException message AWS would return.
//
// What it guarantees:
//   - Parse never panics on any input and reports every rejected document
//     as a *MalformedError whose Reason reads like AWS's
//     MalformedPolicyDocumentException message. The caller enforces the
//     size limit.
//   - An explicit Deny anywhere wins over every Allow and over grants.
//   - A parsed *Policy is immutable and safe for concurrent use; a Context
//     is a plain map and is safe for concurrent reads only.
//
// Known differences from AWS:
//   - Policy variables such as ${aws:username} are not substituted; they
//     are compared literally.
//   - Only the "AWS" principal type can match; "Service" principals parse
//     but never match, since this service has no service principals.
//   - Element names, Effect values and condition operator names are
//     case-sensitive; action names are not; condition key names are not,
//     except the part after kms:EncryptionContext:, aws:ResourceTag/,
//     aws:RequestTag/ and aws:PrincipalTag/, which is case-sensitive as in
//     AWS.
package authz
