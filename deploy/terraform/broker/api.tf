# The REST API (Chalice's RestAPI in sam.yaml: the API, its deployment and stage, the
# stage's throttling) and API Gateway's permission to invoke the function's alias.

resource "aws_api_gateway_rest_api" "rest_api" {
  name = var.api_name
  body = replace(file("${path.module}/openapi.json"), "@@lambda_invoke_arn@@", aws_lambda_alias.live.invoke_arn)

  endpoint_configuration {
    types = [var.api_endpoint_type]
  }

  policy = var.api_policy

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_api_gateway_deployment" "rest_api" {
  rest_api_id = aws_api_gateway_rest_api.rest_api.id

  triggers = {
    redeployment = sha1(join(",", [aws_api_gateway_rest_api.rest_api.body, coalesce(var.api_policy, "")]))
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_api_gateway_stage" "api" {
  #checkov:skip=CKV_AWS_73:the request ID correlates a request across the client, the function's logs, the audit record and Vault; X-Ray is left to the deployer
  #checkov:skip=CKV_AWS_76:the function logs every decision with its source IP and request ID; stage access logs need the account-wide API Gateway CloudWatch role, which the package does not create
  #checkov:skip=CKV_AWS_120:answers are single-use credentials and refusals: a cache would hand one caller's answer to another
  #checkov:skip=CKV2_AWS_29:a WAF web ACL is the deployer's choice; the API is throttled, every route but health and the OpenAPI document needs a cloud identity proof, and with endpoint_type PRIVATE (deploy/prod.toml) only the listed VPC endpoints reach it
  #checkov:skip=CKV2_AWS_51:callers authenticate with a signed cloud identity proof, not a TLS client certificate
  #checkov:skip=CKV2_AWS_4:execution logging (logging_level) needs the account-wide API Gateway CloudWatch role; the function logs every decision
  rest_api_id   = aws_api_gateway_rest_api.rest_api.id
  deployment_id = aws_api_gateway_deployment.rest_api.id
  stage_name    = var.api_stage
}

# Requests over the limit get 429, which the client retries with backoff: keep it below
# what the function's reserved concurrency serves (docs/operations.md).
resource "aws_api_gateway_method_settings" "throttling" {
  #checkov:skip=CKV_AWS_225:answers are single-use credentials and refusals: a cache would hand one caller's answer to another
  #checkov:skip=CKV2_AWS_4:execution logging needs the account-wide API Gateway CloudWatch role; the function logs every decision
  rest_api_id = aws_api_gateway_rest_api.rest_api.id
  stage_name  = aws_api_gateway_stage.api.stage_name
  method_path = "*/*"

  settings {
    throttling_rate_limit  = var.throttle_rate_limit
    throttling_burst_limit = var.throttle_burst_limit
    metrics_enabled        = true
  }
}

resource "aws_lambda_permission" "rest_api_invoke" {
  function_name = aws_lambda_function.api_handler.function_name
  qualifier     = aws_lambda_alias.live.name # the alias API Gateway invokes
  action        = "lambda:InvokeFunction"
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_api_gateway_rest_api.rest_api.execution_arn}/*"
}
