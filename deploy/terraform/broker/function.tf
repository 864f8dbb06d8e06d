# The function and its role (Chalice's APIHandler and ApiHandlerRole in sam.yaml).

resource "aws_iam_role" "api_handler" {
  name = var.role_name
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "lambda.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy" "api_handler" {
  #checkov:skip=CKV_AWS_355:only ec2:DescribeInstances and ecs:DescribeTaskDefinition (no resource scoping) and ecs:DescribeTasks (any task of any member account may be a caller: task/* is no narrower) have Resource *; .chalice/POLICY.md
  name   = "${var.role_name}-policy"
  role   = aws_iam_role.api_handler.id
  policy = var.function_policy
}

resource "aws_lambda_function" "api_handler" {
  #checkov:skip=CKV_AWS_116:API Gateway invokes the function synchronously; a dead-letter queue only serves asynchronous invocations
  #checkov:skip=CKV_AWS_117:the function needs no VPC (it calls AWS APIs and Vault over TLS); docs/operations.md says how to put it in one when Vault is private
  #checkov:skip=CKV_AWS_173:the environment holds no secret (names, the AppRole role ID); the secret ID is in Secrets Manager; Lambda encrypts it at rest with its AWS-managed key
  #checkov:skip=CKV_AWS_50:the request ID correlates a request across the client, the function's logs, the audit record and Vault; X-Ray is left to the deployer
  #checkov:skip=CKV_AWS_272:code signing needs a signing profile the deployer owns; the package is built from a reviewed checkout
  function_name                  = var.function_name
  role                           = aws_iam_role.api_handler.arn
  runtime                        = var.function.runtime
  handler                        = var.function.handler
  memory_size                    = var.function.memory_size
  timeout                        = var.function.timeout
  architectures                  = var.function.architectures
  reserved_concurrent_executions = var.function.reserved_concurrency
  filename                       = "${path.module}/deployment.zip"
  source_code_hash               = filebase64sha256("${path.module}/deployment.zip")
  # SnapStart (docs/operations.md): the init runs once per published version and every
  # execution environment starts from its snapshot; it applies to published versions only,
  # so each change publishes one and the alias below (which API Gateway invokes) follows it.
  publish = true

  snap_start {
    apply_on = var.function.snap_start
  }

  environment {
    variables = var.environment
  }

  tracing_config {
    mode = var.function.tracing_mode
  }

  tags = {
    app = "secret-zero-broker"
  }

  # the log group (with its retention) exists before the function first logs
  depends_on = [aws_cloudwatch_log_group.function, aws_iam_role_policy.api_handler]
}

# What API Gateway invokes: the latest published version (SAM's AutoPublishAlias).
resource "aws_lambda_alias" "live" {
  name             = var.function.alias
  function_name    = aws_lambda_function.api_handler.function_name
  function_version = aws_lambda_function.api_handler.version
}
