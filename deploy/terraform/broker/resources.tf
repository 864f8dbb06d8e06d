# The stateful resources (deploy/resources.yaml in the CloudFormation package): kept when
# the rest is destroyed (prevent_destroy here, DeletionPolicy: Retain there).

resource "aws_dynamodb_table" "table" {
  #checkov:skip=CKV_AWS_119:encrypted at rest with DynamoDB's AWS-managed key; a customer-managed key adds a key policy and a KMS permission for the function (docs/operations.md)
  for_each = var.tables

  name                        = each.value.name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = each.value.hash_key
  deletion_protection_enabled = true

  dynamic "attribute" {
    for_each = each.value.attributes
    content {
      name = attribute.key
      type = attribute.value
    }
  }

  dynamic "global_secondary_index" {
    for_each = each.value.indexes
    content {
      name            = global_secondary_index.value.name
      hash_key        = global_secondary_index.value.hash_key
      range_key       = global_secondary_index.value.range_key
      projection_type = global_secondary_index.value.projection_type
    }
  }

  ttl {
    attribute_name = each.value.ttl_attribute
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }

  tags = {
    app = "secret-zero-broker"
  }

  lifecycle {
    prevent_destroy = true
  }
}

# Created without a value, so the secret ID never appears in a plan or a state file. Put
# the real value with `aws secretsmanager put-secret-value` (docs/operations.md, step 3).
resource "aws_secretsmanager_secret" "vault_secret_id" {
  #checkov:skip=CKV_AWS_149:encrypted with the account's aws/secretsmanager key, so the function needs no KMS permission; docs/operations.md says how to use a customer-managed key
  #checkov:skip=CKV2_AWS_57:rotation is `broker vault rotate-broker-secret` (Vault must create the new secret ID), not a Secrets Manager rotation Lambda
  name        = var.secret_name
  description = "Secret ID of the broker's own Vault AppRole (secret-zero-broker); read by the broker's function only."

  tags = {
    app = "secret-zero-broker"
  }

  lifecycle {
    prevent_destroy = true
  }
}

# The function's log group, made here with a retention so that the function's role needs
# no logs:CreateLogGroup.
resource "aws_cloudwatch_log_group" "function" {
  #checkov:skip=CKV_AWS_158:the logs hold no secret (the test suite's secret scanner enforces it); CloudWatch Logs encrypts them at rest
  #checkov:skip=CKV_AWS_338:retention is the values file's logs.retention_days (400 days by default)
  name              = var.log_group_name
  retention_in_days = var.log_retention_days

  lifecycle {
    prevent_destroy = true
  }
}
