# The reader role the secret-zero broker assumes in a member account to read a caller's
# EC2, IAM and ECS facts there (policies/aws/README.md). Use once per member account,
# with a provider for that account:
#
#   module "secret_zero_reader" {
#     source          = "./modules/reader-role"
#     providers       = { aws = aws.member_account }
#     broker_role_arn = "arn:aws:iam::BROKER_ACCOUNT:role/secret-zero-broker-prod-api_handler"
#     external_id     = "the account's external_id in deploy/prod.toml"
#   }
#
# The permissions are exactly reader-policy.json (copied from policies/aws/ by `make package`).

terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

variable "broker_role_arn" {
  description = "The broker's Lambda execution role (the broker package's output function_role_arn)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/", var.broker_role_arn))
    error_message = "broker_role_arn must be an IAM role ARN."
  }
}

variable "external_id" {
  description = "The external ID configured for this account in the broker's values file (account_readers)."
  type        = string
  sensitive   = true

  validation {
    # RE2 repeats at most 1000 times: the length is checked apart
    condition     = length(var.external_id) >= 2 && length(var.external_id) <= 1224 && can(regex("^[A-Za-z0-9_+=,.@:/-]+$", var.external_id))
    error_message = "external_id must be 2-1224 characters of [A-Za-z0-9_+=,.@:/-]."
  }
}

variable "role_name" {
  type    = string
  default = "secret-zero-reader"
}

resource "aws_iam_role" "reader" {
  name                 = var.role_name
  description          = "Read-only: the secret-zero broker reads callers' instances, roles, instance profiles and ECS tasks"
  max_session_duration = 3600
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { AWS = var.broker_role_arn }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "sts:ExternalId" = var.external_id } }
    }]
  })
}

resource "aws_iam_role_policy" "reader" {
  name   = "secret-zero-reader"
  role   = aws_iam_role.reader.id
  policy = file("${path.module}/reader-policy.json")
}

output "role_arn" {
  description = "role_arn of this account's row in the broker's account_readers."
  value       = aws_iam_role.reader.arn
}
