package kms

import (
	"regexp"
	"slices"
)

// commercialRegions are the Regions of AWS's commercial partition ("aws"),
// as aws-sdk-go-v2 v1.48.0 lists them in
// internal/endpoints/awsrulesfn/partitions.json, less its pseudo-Region
// aws-global. The China, GovCloud, ISO and European Sovereign Cloud
// partitions are left out: their clients sign for those partitions'
// endpoints, not a commercial one.
var commercialRegions = []string{
	"af-south-1", "ap-east-1", "ap-east-2", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-south-1",
	"ap-south-2", "ap-southeast-1", "ap-southeast-2", "ap-southeast-3", "ap-southeast-4", "ap-southeast-5",
	"ap-southeast-6", "ap-southeast-7", "ca-central-1", "ca-west-1", "eu-central-1", "eu-central-2",
	"eu-north-1", "eu-south-1", "eu-south-2", "eu-west-1", "eu-west-2", "eu-west-3", "il-central-1",
	"me-central-1", "me-south-1", "me-west-1", "mx-central-1", "sa-east-1", "sa-west-1", "us-east-1",
	"us-east-2", "us-west-1", "us-west-2",
}

// CommercialRegions returns the Regions served when none are configured.
func CommercialRegions() []string { return slices.Clone(commercialRegions) }

// regionRe is the form of AWS's Region names in every partition
// (us-east-1, us-gov-west-1, us-isob-east-1, eusc-de-east-1): it keeps a
// configured Region usable in ARNs, credential scopes and ciphertexts.
var regionRe = regexp.MustCompile(`^[a-z]{2,4}(-[a-z]+)+-[0-9]{1,2}$`)

// ValidRegion reports whether name has the form of an AWS Region name.
func ValidRegion(name string) bool { return regionRe.MatchString(name) }
