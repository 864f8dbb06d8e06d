output "endpoint_url" {
  description = "BROKER_URL for the clients."
  value       = "https://${aws_api_gateway_rest_api.rest_api.id}.execute-api.${split(":", aws_lambda_function.api_handler.arn)[3]}.amazonaws.com/${aws_api_gateway_stage.api.stage_name}/"
}

output "function_role_arn" {
  description = "The role the member accounts' reader roles trust (modules/reader-role, broker_role_arn)."
  value       = aws_iam_role.api_handler.arn
}

output "function_arn" {
  value = aws_lambda_function.api_handler.arn
}

output "table_names" {
  value = { for kind, table in aws_dynamodb_table.table : kind => table.name }
}

output "vault_secret_id_secret_arn" {
  description = "Put the broker's AppRole secret ID here (docs/operations.md, step 3)."
  value       = aws_secretsmanager_secret.vault_secret_id.arn
}

output "rest_api_id" {
  value = aws_api_gateway_rest_api.rest_api.id
}

output "function_alias_arn" {
  description = "What API Gateway invokes: the alias of the latest published version (SnapStart)."
  value       = aws_lambda_alias.live.arn
}
