"""Serializers of the tokens API: input shapes are validated here, the work is done by accounts.services."""

from __future__ import annotations

from rest_framework import serializers

from accounts.models import ApiToken


class TokenSerializer(serializers.ModelSerializer):
    """An API token as its owner sees it later: never the token itself (only its hash is stored)."""

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "scopes", "created_at", "expires_at", "last_used_at", "revoked_at"]
        read_only_fields = fields

    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiToken.Scope.choices))


class TokenCreatedSerializer(TokenSerializer):
    """The answer to creating a token: the one and only time the raw token is shown."""

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]
        read_only_fields = fields

    token = serializers.CharField(help_text="The raw token; send it as `Authorization: Token <token>`. Shown once.")


class TokenCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=ApiToken.Scope.choices),
        required=False,
        allow_empty=False,
        max_length=len(ApiToken.Scope.values),
        help_text="Defaults to the scopes of the credentials making the call (all of them for a console session).",
    )
    expires_in_days = serializers.IntegerField(min_value=1, max_value=3650, required=False, allow_null=True)
